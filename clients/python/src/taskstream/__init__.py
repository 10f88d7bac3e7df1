"""taskstream: publish task progress to browsers through the taskstream sidecar.

    from taskstream import Publisher
    publisher = Publisher.from_url("redis://localhost:6379/0")
    event_id = publisher.publish("user:42", {"task": "t1", "progress": 40})

See `taskstream.celery` (progress from Celery tasks), `taskstream.django` (publish after the
transaction commits, the sidecar's `--user-group` naming) and `taskstream.channels` (a Django
Channels layer whose unchanged `group_send` calls publish with history).
"""

from .publisher import (
    DEFAULT_HISTORY_SIZE,
    DEFAULT_HISTORY_TTL,
    DEFAULT_PREFIX,
    PUBLISH_SCRIPT,
    AsyncPublisher,
    PayloadError,
    Publisher,
    TaskstreamError,
    encode_payload,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_HISTORY_SIZE",
    "DEFAULT_HISTORY_TTL",
    "DEFAULT_PREFIX",
    "PUBLISH_SCRIPT",
    "AsyncPublisher",
    "PayloadError",
    "Publisher",
    "TaskstreamError",
    "__version__",
    "encode_payload",
]
