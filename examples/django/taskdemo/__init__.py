# Load the Celery app with Django, so @shared_task binds to it (the usual Celery + Django setup).
from .celery import app as celery_app

__all__ = ["celery_app"]
