"""The progress-reporting task, exactly as it was written for Django Channels.

In production this is a Celery task (`@shared_task`); it is plain Python here so the example has
no broker to run. Not one line changed in the migration: group_send goes to the same Redis, and
the sidecar (not a consumer) delivers it.
"""

import uuid

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from .models import TaskNotification


def user_group(user_id):
    return f"user_{user_id}_tasks"


def report_progress(user_id, steps=5, task_id=None):
    task_id = task_id or uuid.uuid4().hex[:8]
    channel_layer = get_channel_layer()
    for step in range(1, steps + 1):
        progress = step * 100 // steps
        # ... a slice of the real work goes here ...
        async_to_sync(channel_layer.group_send)(
            user_group(user_id),
            {"type": "task.progress", "data": {"task": task_id, "progress": progress}},
        )
    TaskNotification.objects.create(user_id=user_id, task_id=task_id, message="done", progress=100)
    async_to_sync(channel_layer.group_send)(
        user_group(user_id),
        {"type": "task.done", "data": {"task": task_id, "progress": 100, "done": True}},
    )
    return task_id
