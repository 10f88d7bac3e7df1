"""Django helpers: publish only after the transaction commits, with the sidecar's group naming.

Settings (all optional but `REDIS_URL`):

```python
TASKSTREAM = {
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "PREFIX": "taskstream:",     # the sidecar's --channel-prefix
    "HISTORY_SIZE": 100,         # the sidecar's --history-size
    "HISTORY_TTL": 600,          # seconds; the sidecar's --history-ttl
    "USER_GROUP": "user:{sub}",  # the sidecar's --user-group ({sub}: the user's pk)
}
```

```python
from taskstream.django import publish_to_user

with transaction.atomic():
    report = Report.objects.create(owner=request.user, ...)
    publish_to_user(request.user, {"type": "report", "id": report.pk})  # sent after COMMIT
```

A browser told about a row can read it: the event leaves only once the row is committed, and
not at all if the transaction rolls back. Payloads are JSON-encoded with `DjangoJSONEncoder`
(dates, decimals, UUIDs).
"""

from __future__ import annotations

import threading
from typing import Any, Optional

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.core.signals import setting_changed
from django.db import transaction

from .publisher import (
    DEFAULT_HISTORY_SIZE,
    DEFAULT_HISTORY_TTL,
    DEFAULT_PREFIX,
    PayloadError,
    Publisher,
)

__all__ = ["get_publisher", "publish_on_commit", "publish_to_user", "user_group"]

#: The sidecar's default `--user-group`.
DEFAULT_USER_GROUP = "user:{sub}"

_lock = threading.Lock()
_publisher: Optional[Publisher] = None


def _config() -> dict[str, Any]:
    return dict(getattr(settings, "TASKSTREAM", {}))


def get_publisher() -> Publisher:
    """The process-wide `Publisher` built from `settings.TASKSTREAM` (made on first use)."""
    global _publisher
    with _lock:
        if _publisher is None:
            conf = _config()
            url = conf.get("REDIS_URL")
            if not url:
                raise PayloadError("settings.TASKSTREAM['REDIS_URL'] is not set")
            _publisher = Publisher.from_url(
                url,
                prefix=conf.get("PREFIX", DEFAULT_PREFIX),
                history_size=conf.get("HISTORY_SIZE", DEFAULT_HISTORY_SIZE),
                history_ttl=conf.get("HISTORY_TTL", DEFAULT_HISTORY_TTL),
                json_encoder=DjangoJSONEncoder,
            )
        return _publisher


def _reset_publisher(*, setting: str, **kwargs: Any) -> None:
    global _publisher
    if setting == "TASKSTREAM":
        with _lock:
            if _publisher is not None:
                _publisher.close()
            _publisher = None


setting_changed.connect(_reset_publisher)


def user_group(user: Any, template: Optional[str] = None) -> str:
    """The group the sidecar's `--user-group` gives `user` (a user object or its pk):
    `template` (default `settings.TASKSTREAM["USER_GROUP"]`, else `user:{sub}`) with `{sub}`
    replaced by the pk, exactly as the sidecar substitutes the authenticated user's id."""
    template = template or _config().get("USER_GROUP", DEFAULT_USER_GROUP)
    sub = getattr(user, "pk", user)
    if sub is None or sub == "":
        raise PayloadError(f"user {user!r} has no pk (not saved, or anonymous)")
    return template.replace("{sub}", str(sub))


def publish_on_commit(
    group: str,
    data: Any,
    *,
    history: bool = True,
    using: Optional[str] = None,
    robust: bool = False,
    publisher: Optional[Publisher] = None,
) -> None:
    """Publishes `data` to `group` when the current transaction of `using` commits (at once
    outside a transaction; never if it rolls back). `robust=True` logs a failed publish instead of
    raising it from the commit (Django 5.0+)."""
    pub = publisher or get_publisher()
    # A bad group or payload fails here, in the caller, not after the commit.
    pub.channel(group)
    payload = pub.encode(data)

    def send() -> None:
        pub.publish(group, payload, history=history)

    if robust:
        transaction.on_commit(send, using=using, robust=True)
    else:
        transaction.on_commit(send, using=using)


def publish_to_user(user: Any, data: Any, **kwargs: Any) -> None:
    """`publish_on_commit(user_group(user), data, **kwargs)`."""
    publish_on_commit(user_group(user), data, **kwargs)
