"""A Django Channels layer that publishes with history: unmodified `group_send` code gets ids.

```python
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "taskstream.channels.TaskStreamChannelLayer",
        "CONFIG": {
            "url": "redis://127.0.0.1:6379/0",  # the sidecar's --redis-url
            "prefix": "taskstream:",            # its --channel-prefix
            "history_size": 100,                # its --history-size
            "history_ttl": 600,                 # its --history-ttl (seconds)
            "message": "data",                  # what browsers get: "data", "full", or a function
        },
    },
}
```

```text
Celery task: async_to_sync(layer.group_send)(g, msg) --+
async code:  await layer.group_send(g, msg) ------------+--[message mapping]--> event
    event --EVALSHA publish.lua--> Redis: XADD <prefix><g> (history) + PUBLISH <prefix><g>
    Redis --> sidecar (--redis-protocol pubsub --history-size N) --> browsers of g, with ids
```

The sidecar holds the WebSockets, so this layer has no consumers to serve: `group_send` is all
it does. The group is the taskstream group of the same name (the sidecar's Channels modes map
names the same way, so a page works unchanged with either mode), and the event is what the
sidecar's `--channels-message data` would have sent: `message["data"]` as JSON (see
`message_event`). `send`, `receive`, `new_channel`, `group_add` and `group_discard` raise
`ChannelLayerUnsupported`.

Every event loop that calls `group_send` gets its own `redis.asyncio` client (`async_to_sync`
runs each call from sync code in a fresh loop), closed when that loop closes, as channels_redis
does with its pools.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import logging
import math
import re
import threading
import weakref
from typing import Any, Callable, Dict, Mapping, Optional, Union

from .publisher import (
    DEFAULT_HISTORY_SIZE,
    DEFAULT_HISTORY_TTL,
    DEFAULT_PREFIX,
    AsyncPublisher,
    PayloadError,
    TaskstreamError,
    Ttl,
    _Settings,
)

try:  # `channels` is optional (the `channels` extra): without it the layer still publishes.
    from channels.layers import BaseChannelLayer as _Base
except ImportError:  # pragma: no cover - exercised in a subprocess by the tests
    _Base = object  # type: ignore[assignment,misc]

__all__ = [
    "MESSAGE_MODES",
    "ChannelLayerUnsupported",
    "MessageMapper",
    "TaskStreamChannelLayer",
    "message_event",
]

logger = logging.getLogger(__name__)

#: The built-in message mappings, named like the sidecar's `--channels-message`.
MESSAGE_MODES = ("data", "full")

#: A custom mapping: `(group, message) -> event` (None: publish nothing for this message).
MessageMapper = Callable[[str, Dict[str, Any]], Any]

_ASGI_KEY_PREFIX = "__asgi_"
# Channels' own rule for group names (channels.layers.BaseChannelLayer), so a name this layer
# takes is one channels_redis takes too, and the sidecar's Channels modes deliver it alike.
_GROUP_NAME = re.compile(r"^[a-zA-Z\d\-_.]+$")
_MAX_NAME_LENGTH = 100
_CONFIG_KEYS = ("url", "prefix", "history_size", "history_ttl", "message", "redis_options")


class ChannelLayerUnsupported(TaskstreamError, NotImplementedError):
    """A channel-layer method this layer cannot serve: the sidecar holds the sockets."""


def _jsonable(value: Any) -> Any:
    """The sidecar's msgpack -> JSON rule (README "What the browser receives") on Python values:
    bytes become standard base64, NaN and infinities `None`, tuples lists, non-string keys their
    JSON text. Other values pass through, so `json.dumps` refuses what msgpack would refuse."""
    if isinstance(value, dict):
        return {_key(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(key)).decode("ascii")
    return json.dumps(_jsonable(key), separators=(",", ":"), ensure_ascii=False)


def _json(value: Any) -> bytes:
    try:
        text = json.dumps(
            _jsonable(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as e:
        raise PayloadError(
            f"message is not JSON-serialisable ({e}); channels_redis's msgpack would refuse "
            "it too. Send plain values, or set CONFIG 'message' to a function that converts it"
        ) from e
    return text.encode("utf-8")


def message_event(message: Mapping[str, Any], mode: str = "data") -> bytes:
    """The event (JSON text) browsers get for a Channels `message`, as the sidecar's Channels
    modes would send it: `"data"` -> `message["data"]` (what a consumer's
    `send_json(event["data"])` sent), `"full"` -> the whole message minus channels' internal
    `__asgi_*` keys. Values follow the sidecar's msgpack -> JSON rule."""
    if mode == "data":
        if "data" not in message:
            raise PayloadError(
                f"message of type {message.get('type')!r} has no 'data' field: browsers get "
                "message['data']; set CONFIG 'message': 'full' to send whole messages"
            )
        return _json(message["data"])
    if mode == "full":
        return _json({k: v for k, v in message.items() if not _is_internal(k)})
    raise PayloadError(f"message mode must be one of {', '.join(MESSAGE_MODES)}, not {mode!r}")


def _is_internal(key: Any) -> bool:
    return isinstance(key, str) and key.startswith(_ASGI_KEY_PREFIX)


def _mapper(message: Union[str, MessageMapper]) -> Callable[[str, Dict[str, Any]], Any]:
    """The configured mapping: a mode name, a callable, or the dotted path of a callable."""
    if callable(message):
        return message
    if not isinstance(message, str):
        raise PayloadError(f"CONFIG 'message' must be a mode name or a function, not {message!r}")
    if message in MESSAGE_MODES:
        return lambda _group, msg: message_event(msg, message)
    module, _, name = message.rpartition(".")
    if not module:
        raise PayloadError(
            f"CONFIG 'message' {message!r}: use {' or '.join(map(repr, MESSAGE_MODES))}, or the "
            "dotted path of a function (group, message) -> event"
        )
    try:
        func = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise PayloadError(f"CONFIG 'message' {message!r}: cannot import it: {e}") from e
    if not callable(func):
        raise PayloadError(f"CONFIG 'message' {message!r} is not callable")
    return func


def _unsupported(method: str, what: str) -> ChannelLayerUnsupported:
    return ChannelLayerUnsupported(
        f"TaskStreamChannelLayer.{method}(): {what}. The taskstream sidecar holds the WebSocket "
        "connections, not Django, so there are no consumers or channel names here: this layer "
        "only publishes, with group_send(group, message) reaching the browsers of `group` (the "
        "groups the sidecar gives each connection: --user-group, forward auth's \"groups\"). "
        "Remove the consumer and its routing, or keep a channels_redis layer under another alias "
        "for it."
    )


class TaskStreamChannelLayer(_Base):  # type: ignore[misc,valid-type]
    """`group_send` through the publish-with-history script; nothing else (see the module).

    CONFIG keys: `url` (required; `redis://` or `rediss://`), `prefix`, `history_size`,
    `history_ttl` (as for `taskstream.Publisher`), `message` (`"data"`, `"full"`, or a function
    `(group, message) -> event` or its dotted path; the event is JSON-encoded unless it is
    `str`/`bytes`, and None publishes nothing) and `redis_options` (keyword arguments for
    `redis.asyncio.Redis.from_url`, e.g. `ssl_ca_certs`, `socket_timeout`).
    """

    extensions = ["groups"]

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        history_size: int = DEFAULT_HISTORY_SIZE,
        history_ttl: Ttl = DEFAULT_HISTORY_TTL,
        message: Union[str, MessageMapper] = "data",
        redis_options: Optional[Mapping[str, Any]] = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise PayloadError(
                f"TaskStreamChannelLayer: unknown CONFIG key(s) {', '.join(sorted(unknown))}; "
                f"it takes {', '.join(_CONFIG_KEYS)} (channels_redis's hosts, capacity, expiry, "
                "group_expiry and symmetric_encryption_keys have no meaning here)"
            )
        if not url or not isinstance(url, str):
            raise PayloadError("TaskStreamChannelLayer: CONFIG 'url' (a redis:// URL) is not set")
        super().__init__()  # BaseChannelLayer's expiry and capacity: unused, kept at defaults
        # Validates prefix, history_size and history_ttl now, not at the first group_send.
        _Settings(prefix, history_size, history_ttl, None)
        if prefix == "asgi":
            logger.warning(
                "TaskStreamChannelLayer: CONFIG 'prefix' is 'asgi', channels_redis's default; "
                "here it is the sidecar's --channel-prefix (default %r): set both alike",
                DEFAULT_PREFIX,
            )
        self.url = url
        self.prefix = prefix
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.redis_options = dict(redis_options or {})
        self._map = _mapper(message)
        self._lock = threading.Lock()
        self._publishers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncPublisher]" = (
            weakref.WeakKeyDictionary()
        )
        self._hooked: "weakref.WeakSet[asyncio.AbstractEventLoop]" = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"<TaskStreamChannelLayer prefix={self.prefix!r} history_size={self.history_size}>"

    def event_for(self, group: str, message: Any) -> Any:
        """What `group_send(group, message)` publishes (None: nothing), or a clear error."""
        self._check_group(group)
        if not isinstance(message, dict):
            raise PayloadError(f"message must be a dict, not {type(message).__name__}")
        if not isinstance(message.get("type"), str):
            raise PayloadError(
                "message has no string 'type' (every Channels message needs one; the sidecar's "
                "Channels modes drop such messages)"
            )
        return self._map(group, message)

    async def group_send(self, group: str, message: Dict[str, Any]) -> Optional[str]:
        """Publishes the event of `message` to the taskstream group `group` with history;
        returns its id (None when the mapping published nothing)."""
        event = self.event_for(group, message)
        if event is None:
            return None
        return await self._publisher().publish(group, event)

    async def close(self) -> None:
        """Closes the running loop's Redis client (a closing loop closes its own by itself)."""
        with self._lock:
            publisher = self._publishers.pop(asyncio.get_running_loop(), None)
        if publisher is not None:
            await publisher.aclose()

    # What a consumer would call: nothing of it exists when the sidecar holds the sockets.

    async def send(self, channel: str, message: Dict[str, Any]) -> None:
        raise _unsupported("send", f"cannot send to the channel {channel!r}")

    async def receive(self, channel: str) -> Dict[str, Any]:
        raise _unsupported("receive", f"there is nothing to receive on {channel!r}")

    async def new_channel(self, prefix: str = "specific.") -> str:
        raise _unsupported("new_channel", "there are no consumer channels")

    async def group_add(self, group: str, channel: str) -> None:
        raise _unsupported(
            "group_add", f"cannot add {channel!r} to {group!r} (the sidecar decides groups)"
        )

    async def group_discard(self, group: str, channel: str) -> None:
        raise _unsupported(
            "group_discard",
            f"cannot remove {channel!r} from {group!r} (the sidecar decides groups)",
        )

    def _check_group(self, group: Any) -> None:
        # TypeError, as channels raises for a bad group name.
        valid = isinstance(group, str) and len(group) < _MAX_NAME_LENGTH
        if not valid or not _GROUP_NAME.match(group):
            raise TypeError(
                f"group name {group!r}: Channels group names are strings shorter than "
                f"{_MAX_NAME_LENGTH} characters of ASCII letters, digits, '-', '_' and '.'"
            )

    def _publisher(self) -> AsyncPublisher:
        loop = asyncio.get_running_loop()
        with self._lock:
            publisher = self._publishers.get(loop)
            if publisher is None:
                publisher = AsyncPublisher.from_url(
                    self.url,
                    prefix=self.prefix,
                    history_size=self.history_size,
                    history_ttl=self.history_ttl,
                    **self.redis_options,
                )
                self._publishers[loop] = publisher
                self._close_with(loop)
        return publisher

    def _close_with(self, loop: asyncio.AbstractEventLoop) -> None:
        """Closes the loop's client when the loop closes: a client outlives no loop, and no
        connection is left for the garbage collector to find open."""
        if loop in self._hooked:
            return
        original = loop.close
        layer = weakref.ref(self)

        def close(*args: Any, **kwargs: Any) -> None:
            # Unhook (back to what was there: another layer's hook, or the class's method).
            vars(loop).pop("close", None)
            owner = layer()
            if owner is not None:
                with owner._lock:
                    publisher = owner._publishers.pop(loop, None)
                if publisher is not None and not loop.is_running() and not loop.is_closed():
                    try:
                        loop.run_until_complete(publisher.aclose())
                    except Exception as e:  # closing must not stop the loop from closing
                        logger.warning("taskstream channel layer: closing a Redis client: %s", e)
            original(*args, **kwargs)

        try:
            loop.close = close  # type: ignore[method-assign]
            self._hooked.add(loop)
        except AttributeError:
            # A loop class without instance attributes (uvloop): the weak map still drops the
            # client with the loop; its connections close when collected.
            logger.debug("taskstream channel layer: cannot hook %r.close", loop)
