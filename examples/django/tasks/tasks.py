"""The progress-reporting Celery task, in the two shapes of the migration.

By default it publishes through the `taskstream` package with history: every step is stored in
the user's group history in Redis and delivered live, so a page that reconnects (a sidecar
restart, a Wi-Fi blip) or reloads gets every step.

With TASKSTREAM_CHANNEL_LAYER=history (settings.py) it runs the code it had under Django
Channels, unchanged: `async_to_sync(channel_layer.group_send)(group, {"type": "task.progress",
"data": event})`. The channel layer is taskstream's, which publishes `data` with the same history,
so the page cannot tell the two apart.

Either way the browser gets {"type": "progress", "task", "percent", "state", "message"} per step,
"done" at the end (after the notification row is committed) and "failed" if the task raises.
"""

import time

from asgiref.sync import async_to_sync
from celery import shared_task
from django.conf import settings
from taskstream.celery import Progress
from taskstream.django import get_publisher, user_group

from .models import TaskNotification


@shared_task(bind=True)
def report_progress(self, user_id, steps=None):
    steps = steps or settings.TASK_STEPS
    if settings.TASKSTREAM_CHANNEL_LAYER:
        return report_progress_with_group_send(self, user_id, steps)
    progress = Progress(get_publisher())
    # "done" when the block ends, "failed" (and re-raised) if it raises.
    with progress.track(self, user_group(user_id)) as report:
        for step in range(1, steps):
            time.sleep(settings.TASK_STEP_SECONDS)  # ... a slice of the real work ...
            report(step * 100 // steps, message=f"step {step} of {steps}")
        time.sleep(settings.TASK_STEP_SECONDS)
        TaskNotification.objects.create(
            user_id=user_id, task_id=self.request.id, message="done", progress=100
        )
    return self.request.id


def report_progress_with_group_send(task, user_id, steps):
    """The same task as written for Django Channels: nothing here knows about taskstream (the
    group name is the one settings.py gives the page with TASKSTREAM_CHANNEL_LAYER=history)."""
    from channels.layers import get_channel_layer

    channel_layer = get_channel_layer()
    group = f"user_{user_id}_tasks"  # the group the consumer joined (sidecar: --user-group)
    percent = 0

    def send(state, message=None):
        event = {
            "type": "progress",
            "task": task.request.id,
            "percent": percent,
            "state": state,
            "message": message,
        }
        async_to_sync(channel_layer.group_send)(group, {"type": "task.progress", "data": event})

    try:
        for step in range(1, steps):
            time.sleep(settings.TASK_STEP_SECONDS)  # ... a slice of the real work ...
            percent = step * 100 // steps
            send("running", f"step {step} of {steps}")
        time.sleep(settings.TASK_STEP_SECONDS)
        TaskNotification.objects.create(
            user_id=user_id, task_id=task.request.id, message="done", progress=100
        )
    except Exception as e:
        send("failed", str(e) or type(e).__name__)
        raise
    percent = 100
    send("done")
    return task.request.id
