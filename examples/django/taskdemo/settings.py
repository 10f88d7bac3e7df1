"""Settings of the example, after the migration off Daphne and Channels.

Removed: "daphne" from INSTALLED_APPS, ASGI_APPLICATION, asgi.py and its URLRouter, and the
channel layer: tasks publish through the `taskstream` package with history (TASKSTREAM below), so
a browser that reconnects gets every step it missed.
"""

import os
from pathlib import Path

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

# Celery with Redis as the broker: `celery -A taskdemo worker`.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
CELERY_TASK_ACKS_LATE = True
# Seconds between two progress steps of the example task (the tests make it short).
TASK_STEP_SECONDS = float(os.environ.get("TASK_STEP_SECONDS", "0.5"))
