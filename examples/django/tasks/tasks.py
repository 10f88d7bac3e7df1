"""The progress-reporting Celery task.

It publishes through the `taskstream` package (clients/python) with history: every step is
stored in the user's group history in Redis and delivered live, so a page that reconnects (a
sidecar restart, a Wi-Fi blip) or reloads gets every step. The events have the shape the browser
client understands: {"type": "progress", "task", "percent", "state", "message"}.
"""

import time

from celery import shared_task
from django.conf import settings
from taskstream.celery import Progress
from taskstream.django import get_publisher, user_group

from .models import TaskNotification


@shared_task(bind=True)
def report_progress(self, user_id, steps=5):
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
