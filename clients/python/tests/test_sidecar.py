"""The publisher end to end: the real sidecar binary relays what `Publisher` publishes, with the
ids it returned (history on), resumes from them, and strips the envelope for plain clients and
for sidecars with history off."""

from __future__ import annotations

import json
from typing import Any, Callable

from websockets.sync.client import ClientConnection, connect

from conftest import WAIT, RedisServer, Sidecar
from taskstream import Publisher


def ws(sidecar: Sidecar, query: str, v1: bool = True) -> ClientConnection:
    return connect(
        sidecar.ws_url(query),
        subprotocols=["taskstream.v1"] if v1 else None,  # type: ignore[list-item]
        open_timeout=WAIT,
    )


def frames(conn: ClientConnection, n: int) -> list[Any]:
    return [json.loads(conn.recv(timeout=WAIT)) for _ in range(n)]


def test_events_carry_the_ids_the_publisher_returned_and_resume_from_them(
    redis_server: RedisServer, start_sidecar: Callable[..., Sidecar]
) -> None:
    sc = start_sidecar("--auth", "none", "--redis-url", redis_server.url, "--history-size", "50")
    pub = Publisher.from_url(redis_server.url, history_size=50)
    with ws(sc, "groups=user:1") as live:
        assert live.subprotocol == "taskstream.v1"
        first = pub.publish("user:1", {"n": 1})
        assert pub.publish("user:1", {"n": 0}, history=False) is None
        second = pub.publish("user:1", "text")
        # The group had no event yet: its position at connect comes first, "0".
        assert frames(live, 4) == [
            {"type": "position", "group": "user:1", "id": "0"},
            {"type": "event", "group": "user:1", "id": first, "data": {"n": 1}},
            {"type": "event", "group": "user:1", "data": {"n": 0}},
            {"type": "event", "group": "user:1", "id": second, "data": "text"},
        ]
    # A client that saw only the first event resumes right after it.
    with ws(sc, f"groups=user:1&last_id=user:1:{first}") as resumed:
        assert frames(resumed, 1) == [
            {"type": "event", "group": "user:1", "id": second, "data": "text"}
        ]
    # A plain client (no subprotocol) gets the payload verbatim: the envelope is stripped.
    with ws(sc, "groups=user:1", v1=False) as plain:
        pub.publish("user:1", {"n": 2})
        assert plain.recv(timeout=WAIT) == '{"n":2}'


def test_a_sidecar_with_history_off_still_strips_the_envelope(
    redis_server: RedisServer, start_sidecar: Callable[..., Sidecar]
) -> None:
    sc = start_sidecar("--auth", "none", "--redis-url", redis_server.url)
    pub = Publisher.from_url(redis_server.url)
    with ws(sc, "groups=g", v1=False) as plain, ws(sc, "groups=g") as v1:
        event_id = pub.publish("g", {"n": 1})
        assert plain.recv(timeout=WAIT) == '{"n":1}'
        assert frames(v1, 1) == [{"type": "event", "group": "g", "id": event_id, "data": {"n": 1}}]
