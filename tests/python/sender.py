"""Calls group_send exactly as a Celery task would: plain (sync) Python, async_to_sync.

Reads one JSON command per stdin line and answers "ok" once group_send returned:
  {"group": "user_1_tasks", "message": {"type": "task.progress", "data": {...}}}
  {"group": "g", "eval": "<Python expression for the message>"}   (bytes, NaN, int keys...)
Prints "ready" once Django is set up.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chtest.settings")

import django  # noqa: E402

django.setup()

from asgiref.sync import async_to_sync  # noqa: E402
from channels.layers import get_channel_layer  # noqa: E402

layer = get_channel_layer()
print("ready", flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    message = eval(cmd["eval"]) if "eval" in cmd else cmd["message"]  # test helper only
    async_to_sync(layer.group_send)(cmd["group"], message)
    print("ok", flush=True)
