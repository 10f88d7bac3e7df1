"""The Celery app: `celery -A taskdemo worker`. Broker: Redis (CELERY_BROKER_URL, else REDIS_URL)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskdemo.settings")

app = Celery("taskdemo")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
