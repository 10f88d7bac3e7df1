"""Calls group_send exactly as a Celery task would: plain (sync) Python, async_to_sync.

Reads one JSON command per stdin line and answers "ok" once group_send returned:
  {"group": "user_1_tasks", "message": {"type": "task.progress", "data": {...}}}
  {"group": "g", "eval": "<Python expression for the message>"}   (bytes, NaN, int keys...)
  {"group": "g", "stream_seconds": 16, "rate": 500}
      group_send {"type": "seq", "data": {"seq": i}} for i = 0, 1, ... at a steady `rate` per
      second, without pause, for that long; answers "ok <count>"
Prints "ready" once Django is set up.
"""

import asyncio
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


async def stream(group, seconds, rate):
    """group_send at a steady rate for `seconds`; returns how many were sent."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    n = 0
    while loop.time() < start + seconds:
        await layer.group_send(group, {"type": "seq", "data": {"seq": n}})
        n += 1
        ahead = start + n / rate - loop.time()
        if ahead > 0:
            await asyncio.sleep(ahead)
    return n


for line in sys.stdin:
    cmd = json.loads(line)
    if "stream_seconds" in cmd:
        sent = asyncio.run(stream(cmd["group"], cmd["stream_seconds"], cmd["rate"]))
        print(f"ok {sent}", flush=True)
        continue
    message = eval(cmd["eval"]) if "eval" in cmd else cmd["message"]  # test helper only
    async_to_sync(layer.group_send)(cmd["group"], message)
    print("ok", flush=True)
