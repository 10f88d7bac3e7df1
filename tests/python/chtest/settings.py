"""Minimal Django settings for the channels tests: only CHANNEL_LAYERS matters.

The layer is picked from the environment, so one project serves every variant:
CHANNELS_LAYER=core|pubsub, CHANNELS_HOSTS (comma-separated Redis URLs),
CHANNELS_PREFIX (default "asgi"), CHANNELS_KEYS (comma-separated; empty = no encryption).
"""

import os

SECRET_KEY = "tests-only-not-secret"
INSTALLED_APPS = ["channels"]
USE_TZ = True

_config = {
    "hosts": os.environ["CHANNELS_HOSTS"].split(","),
    "prefix": os.environ.get("CHANNELS_PREFIX", "asgi"),
}
if os.environ.get("CHANNELS_KEYS"):
    _config["symmetric_encryption_keys"] = os.environ["CHANNELS_KEYS"].split(",")

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": {
            "core": "channels_redis.core.RedisChannelLayer",
            "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
        }[os.environ["CHANNELS_LAYER"]],
        "CONFIG": _config,
    }
}
