"""Publishing events to taskstream groups (docs/protocol.md of the taskstream repository).

```text
app / Celery worker --Publisher.publish(group, data)--> Redis
    history=True:  EVAL publish.lua  ->  XADD <prefix><group> (trimmed, PEXPIRE) + PUBLISH envelope
    history=False: PUBLISH <prefix><group> <payload>                     (live only)
Redis --pub/sub--> taskstream sidecar --WebSocket--> browsers of <group>
```

`Publisher` wraps a synchronous redis-py client, `AsyncPublisher` a `redis.asyncio` one. Both take
any client (plain, TLS, Sentinel master, Cluster), or build one with `from_url`.
"""

from __future__ import annotations

import datetime
import json
from importlib import resources
from typing import TYPE_CHECKING, Any, Optional, Type, Union

import redis

if TYPE_CHECKING:
    import redis.asyncio

__all__ = [
    "AsyncPublisher",
    "DEFAULT_HISTORY_SIZE",
    "DEFAULT_HISTORY_TTL",
    "DEFAULT_PREFIX",
    "PUBLISH_SCRIPT",
    "PayloadError",
    "Publisher",
    "TaskstreamError",
    "encode_payload",
]

#: The sidecar's default `--channel-prefix`.
DEFAULT_PREFIX = "taskstream:"
#: Events kept per group. Match the sidecar's `--history-size` (whose default, 0, turns history
#: off on the sidecar: set it there, e.g. `--history-size 100`).
DEFAULT_HISTORY_SIZE = 100
#: Seconds a group's history lives after its last event; the sidecar's `--history-ttl` default.
DEFAULT_HISTORY_TTL = 600.0

#: The publish-with-history script, byte for byte the sidecar's `sidecar/src/broker/publish.lua`.
PUBLISH_SCRIPT: str = resources.files("taskstream").joinpath("publish.lua").read_bytes().decode("utf-8")

_ENVELOPE = 0x1E  # reserved first byte: the live copy of a history event is "\x1e<id>\x1e<payload>"
_MAX_GROUP_BYTES = 200  # the sidecar refuses longer group names

Data = Any
Ttl = Union[float, int, datetime.timedelta]


class TaskstreamError(Exception):
    """Base class of the errors this package raises itself (redis-py errors pass through)."""


class PayloadError(TaskstreamError, ValueError):
    """The event cannot be published as given (bad group name, payload or settings)."""


def encode_payload(data: Data, json_encoder: Optional[Type[json.JSONEncoder]] = None) -> bytes:
    """The wire payload of `data`: `str`/`bytes` as they are (UTF-8), anything else as JSON."""
    if isinstance(data, str):
        payload = data.encode("utf-8")
    elif isinstance(data, (bytes, bytearray, memoryview)):
        payload = bytes(data)
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PayloadError(f"payload is not UTF-8 ({e}); the sidecar would drop it") from e
    else:
        try:
            text = json.dumps(data, cls=json_encoder, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as e:
            raise PayloadError(f"payload is not JSON-serialisable: {e}") from e
        payload = text.encode("utf-8")
    if payload[:1] == bytes([_ENVELOPE]):
        raise PayloadError(
            "payload starts with byte 0x1e, which taskstream reserves for its history envelope"
        )
    return payload


def _check_group(group: str) -> None:
    if not isinstance(group, str) or not group:
        raise PayloadError(f"group must be a non-empty string, not {group!r}")
    if len(group.encode("utf-8")) > _MAX_GROUP_BYTES:
        raise PayloadError(f"group {group[:40]!r}...: longer than {_MAX_GROUP_BYTES} bytes")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in group):
        raise PayloadError(f"group {group!r}: whitespace and control characters are not allowed")


def _ttl_ms(ttl: Ttl) -> int:
    seconds = ttl.total_seconds() if isinstance(ttl, datetime.timedelta) else float(ttl)
    ms = int(round(seconds * 1000))
    if ms < 1:
        raise PayloadError(f"history_ttl must be positive, not {ttl!r}")
    return ms


def _as_str(value: Union[bytes, str]) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else value


class _Settings:
    """What both publishers share: naming, encoding and the script's arguments."""

    def __init__(
        self,
        prefix: str,
        history_size: int,
        history_ttl: Ttl,
        json_encoder: Optional[Type[json.JSONEncoder]],
    ) -> None:
        if not isinstance(history_size, int) or isinstance(history_size, bool) or history_size < 1:
            raise PayloadError(f"history_size must be a positive integer, not {history_size!r}")
        self.prefix = prefix
        self.history_size = history_size
        self.history_ttl_ms = _ttl_ms(history_ttl)
        self.json_encoder = json_encoder

    def channel(self, group: str) -> str:
        _check_group(group)
        return self.prefix + group

    def script_args(self, payload: bytes) -> list[Union[bytes, int]]:
        return [payload, self.history_size, self.history_ttl_ms]


class Publisher:
    """Publishes events to taskstream groups with a synchronous redis-py client.

    `prefix` must equal the sidecar's `--channel-prefix`; `history_size` and `history_ttl`
    (seconds or a `timedelta`) should equal its `--history-size` and `--history-ttl`.
    Thread-safe as far as the redis-py client is (a `redis.Redis` with its pool is).
    """

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = DEFAULT_PREFIX,
        history_size: int = DEFAULT_HISTORY_SIZE,
        history_ttl: Ttl = DEFAULT_HISTORY_TTL,
        json_encoder: Optional[Type[json.JSONEncoder]] = None,
    ) -> None:
        self._settings = _Settings(prefix, history_size, history_ttl, json_encoder)
        self.redis = client
        # EVALSHA, falling back to EVAL (and caching the script) when Redis does not know it.
        self._script = client.register_script(PUBLISH_SCRIPT)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        history_size: int = DEFAULT_HISTORY_SIZE,
        history_ttl: Ttl = DEFAULT_HISTORY_TTL,
        json_encoder: Optional[Type[json.JSONEncoder]] = None,
        **redis_kwargs: Any,
    ) -> "Publisher":
        """A publisher on `redis.Redis.from_url(url, **redis_kwargs)` (`redis://`, `rediss://`)."""
        return cls(
            redis.Redis.from_url(url, **redis_kwargs),
            prefix=prefix,
            history_size=history_size,
            history_ttl=history_ttl,
            json_encoder=json_encoder,
        )

    @property
    def prefix(self) -> str:
        return self._settings.prefix

    @property
    def history_size(self) -> int:
        return self._settings.history_size

    @property
    def history_ttl_ms(self) -> int:
        return self._settings.history_ttl_ms

    def channel(self, group: str) -> str:
        """The Redis channel (and history stream key) of `group`: `<prefix><group>`."""
        return self._settings.channel(group)

    def encode(self, data: Data) -> bytes:
        """The payload `publish` would send for `data` (raises `PayloadError` if it cannot)."""
        return encode_payload(data, self._settings.json_encoder)

    def publish(self, group: str, data: Data, *, history: bool = True) -> Optional[str]:
        """Publishes `data` to `group`; returns the event id, or None when `history` is False.

        With history the event is stored in the group's stream and published in one atomic
        script; without, it is a plain `PUBLISH` (live only, at-most-once).
        """
        key = self._settings.channel(group)
        payload = self.encode(data)
        if not history:
            self.redis.publish(key, payload)
            return None
        return _as_str(self._script(keys=[key], args=self._settings.script_args(payload)))

    def close(self) -> None:
        """Closes the redis client (and its pool)."""
        self.redis.close()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncPublisher:
    """`Publisher` for asyncio code, on a `redis.asyncio` client: `await publisher.publish(...)`."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = DEFAULT_PREFIX,
        history_size: int = DEFAULT_HISTORY_SIZE,
        history_ttl: Ttl = DEFAULT_HISTORY_TTL,
        json_encoder: Optional[Type[json.JSONEncoder]] = None,
    ) -> None:
        self._settings = _Settings(prefix, history_size, history_ttl, json_encoder)
        self.redis = client
        self._script = client.register_script(PUBLISH_SCRIPT)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        history_size: int = DEFAULT_HISTORY_SIZE,
        history_ttl: Ttl = DEFAULT_HISTORY_TTL,
        json_encoder: Optional[Type[json.JSONEncoder]] = None,
        **redis_kwargs: Any,
    ) -> "AsyncPublisher":
        """A publisher on `redis.asyncio.Redis.from_url(url, **redis_kwargs)`."""
        import redis.asyncio

        return cls(
            redis.asyncio.Redis.from_url(url, **redis_kwargs),
            prefix=prefix,
            history_size=history_size,
            history_ttl=history_ttl,
            json_encoder=json_encoder,
        )

    @property
    def prefix(self) -> str:
        return self._settings.prefix

    @property
    def history_size(self) -> int:
        return self._settings.history_size

    @property
    def history_ttl_ms(self) -> int:
        return self._settings.history_ttl_ms

    def channel(self, group: str) -> str:
        """The Redis channel (and history stream key) of `group`: `<prefix><group>`."""
        return self._settings.channel(group)

    def encode(self, data: Data) -> bytes:
        """The payload `publish` would send for `data` (raises `PayloadError` if it cannot)."""
        return encode_payload(data, self._settings.json_encoder)

    async def publish(self, group: str, data: Data, *, history: bool = True) -> Optional[str]:
        """Publishes `data` to `group`; returns the event id, or None when `history` is False."""
        key = self._settings.channel(group)
        payload = self.encode(data)
        if not history:
            await self.redis.publish(key, payload)
            return None
        return _as_str(await self._script(keys=[key], args=self._settings.script_args(payload)))

    async def aclose(self) -> None:
        """Closes the redis client (and its pool)."""
        await self.redis.aclose()

    async def __aenter__(self) -> "AsyncPublisher":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
