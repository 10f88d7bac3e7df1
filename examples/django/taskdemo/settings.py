"""Settings of the example, after the migration off Daphne and Channels.

Removed: "daphne" from INSTALLED_APPS, ASGI_APPLICATION, asgi.py and its URLRouter. By default
there is no channel layer: tasks publish through the `taskstream` package with history (TASKSTREAM
below), so a browser that reconnects gets every step it missed.

TASKSTREAM_CHANNEL_LAYER=history keeps the task's Channels code instead (`group_send`, unchanged)
and selects taskstream's channel layer, which publishes with the same history: the settings-only
migration. Run the sidecar with `--user-group user_{sub}_tasks` then (Channels group names
cannot hold the `:` of the default `user:{sub}`).
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "tasks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "taskdemo.urls"
WSGI_APPLICATION = "taskdemo.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB", BASE_DIR / "db.sqlite3"),
    }
}

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
STATIC_URL = "static/"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")

# The taskstream publisher (clients/python). HISTORY_SIZE and HISTORY_TTL match the sidecar's
# --history-size / --history-ttl; USER_GROUP its --user-group (the default, user:{sub}).
TASKSTREAM = {
    "REDIS_URL": REDIS_URL,
    "HISTORY_SIZE": 100,
    "HISTORY_TTL": 600,
    "USER_GROUP": "user:{sub}",
}

# "history": CHANNEL_LAYERS below, and tasks/tasks.py sends with group_send. Unset or empty: no
# channel layer, tasks publish with taskstream.celery.Progress.
TASKSTREAM_CHANNEL_LAYER = os.environ.get("TASKSTREAM_CHANNEL_LAYER", "")
if TASKSTREAM_CHANNEL_LAYER == "history":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "taskstream.channels.TaskStreamChannelLayer",
            "CONFIG": {
                "url": REDIS_URL,
                "history_size": TASKSTREAM["HISTORY_SIZE"],
                "history_ttl": TASKSTREAM["HISTORY_TTL"],
                "prefix": "taskstream:",
                # Browsers get message["data"], as a consumer's send_json(event["data"]) sent.
                "message": "data",
            },
        }
    }
    # The sidecar's --user-group user_{sub}_tasks: a group name Channels accepts.
    TASKSTREAM["USER_GROUP"] = "user_{sub}_tasks"
elif TASKSTREAM_CHANNEL_LAYER:
    raise ImproperlyConfigured(
        f"TASKSTREAM_CHANNEL_LAYER={TASKSTREAM_CHANNEL_LAYER!r}: use 'history', or leave it unset"
    )

# Celery with Redis as the broker: `celery -A taskdemo worker`.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
CELERY_TASK_ACKS_LATE = True
# Seconds between two progress steps of the example task (the tests make it short).
TASK_STEP_SECONDS = float(os.environ.get("TASK_STEP_SECONDS", "0.5"))
# Progress steps of the example task.
TASK_STEPS = int(os.environ.get("TASK_STEPS", "5"))
