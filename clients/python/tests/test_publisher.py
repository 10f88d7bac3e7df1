"""Publisher against a real redis-server: the script's effects (stream, trimming, lost-id marker,
ttl, enveloped live copy), plain PUBLISH without history, encoding and validation."""

from __future__ import annotations

import datetime
import re
import threading
from typing import Any

import pytest
import redis

from conftest import REPO, WAIT, RedisServer, eventually
from taskstream import PUBLISH_SCRIPT, PayloadError, Publisher

ID = re.compile(r"^\d+-\d+$")


def id_key(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


def max_deleted(r: "redis.Redis[bytes]", key: str) -> str:
    info: dict[Any, Any] = r.xinfo_stream(key)
    value = info["max-deleted-entry-id"]
    return value.decode() if isinstance(value, bytes) else str(value)


class Subscriber:
    """A real SUBSCRIBE on one channel; `next()` waits (bounded) for the next message's data."""

    def __init__(self, server: RedisServer, channel: str) -> None:
        self.pubsub = server.client().pubsub()
        self.pubsub.subscribe(channel)
        confirm = self.pubsub.get_message(timeout=WAIT)
        assert confirm and confirm["type"] == "subscribe"

    def next(self) -> bytes:
        msg = self.pubsub.get_message(timeout=WAIT)
        assert msg is not None, "no message within the wait"
        assert msg["type"] == "message", msg
        return bytes(msg["data"])

    def close(self) -> None:
        self.pubsub.close()


def test_shipped_script_is_byte_identical_to_the_sidecars() -> None:
    sidecar = (REPO / "sidecar/src/broker/publish.lua").read_bytes()
    assert PUBLISH_SCRIPT.encode("utf-8") == sidecar


def test_publish_with_history_stores_the_event_and_returns_its_id(redis_server: RedisServer) -> None:
    pub = Publisher.from_url(redis_server.url)
    first = pub.publish("user:42", {"task": "t1", "progress": 40})
    second = pub.publish("user:42", "plain text")
    assert first is not None and second is not None
    assert ID.match(first) and ID.match(second)
    assert id_key(first) < id_key(second)
    r = redis_server.client()
    entries = r.xrange("taskstream:user:42")
    assert [(i.decode(), f) for i, f in entries] == [
        (first, {b"d": b'{"task":"t1","progress":40}'}),
        (second, {b"d": b"plain text"}),
    ]
    pub.close()


def test_live_copy_carries_the_id_in_the_envelope(redis_server: RedisServer) -> None:
    sub = Subscriber(redis_server, "taskstream:g")
    pub = Publisher.from_url(redis_server.url)
    event_id = pub.publish("g", {"n": 1})
    assert sub.next() == b"\x1e" + str(event_id).encode() + b'\x1e{"n":1}'
    sub.close()


def test_history_false_is_a_plain_publish_and_stores_nothing(redis_server: RedisServer) -> None:
    sub = Subscriber(redis_server, "taskstream:g")
    pub = Publisher.from_url(redis_server.url)
    assert pub.publish("g", {"n": 1}, history=False) is None
    assert sub.next() == b'{"n":1}'
    assert redis_server.client().exists("taskstream:g") == 0
    sub.close()


def test_prefix_names_the_channel_and_the_stream(redis_server: RedisServer) -> None:
    sub = Subscriber(redis_server, "app1/g")
    pub = Publisher.from_url(redis_server.url, prefix="app1/")
    assert pub.channel("g") == "app1/g"
    event_id = pub.publish("g", "x")
    assert sub.next() == f"\x1e{event_id}\x1ex".encode()
    assert redis_server.client().xlen("app1/g") == 1
    sub.close()


def test_history_is_trimmed_to_size_and_records_the_last_trimmed_id(
    redis_server: RedisServer,
) -> None:
    pub = Publisher.from_url(redis_server.url, history_size=3)
    ids = [pub.publish("g", {"n": n}) for n in range(7)]
    r = redis_server.client()
    kept = r.xrange("taskstream:g")
    assert [i.decode() for i, _ in kept] == ids[4:]
    assert [f[b"d"] for _, f in kept] == [b'{"n":4}', b'{"n":5}', b'{"n":6}']
    assert max_deleted(r, "taskstream:g") == ids[3]


def test_a_new_stream_marks_every_earlier_id_as_lost(redis_server: RedisServer) -> None:
    r = redis_server.client()
    pub = Publisher.from_url(redis_server.url)
    first = str(pub.publish("g", "a"))
    ms, seq = id_key(first)
    # A brand-new stream's first id is <ms>-0: everything up to the end of the previous ms is lost.
    assert seq == 0
    assert max_deleted(r, "taskstream:g") == f"{ms - 1}-18446744073709551615"
    # A stream emptied but still present (its last id survives): the id just before the new one.
    r.execute_command("XSETID", "taskstream:g", "9999999999999-5")
    r.xtrim("taskstream:g", maxlen=0)
    assert r.xlen("taskstream:g") == 0
    after = pub.publish("g", "b")
    assert after == "9999999999999-6"
    assert max_deleted(r, "taskstream:g") == "9999999999999-5"


def test_history_expires_ttl_after_the_last_event(redis_server: RedisServer) -> None:
    r = redis_server.client()
    pub = Publisher.from_url(redis_server.url, history_ttl=datetime.timedelta(seconds=30))
    assert pub.history_ttl_ms == 30_000
    pub.publish("g", "a")
    assert 29_000 < r.pttl("taskstream:g") <= 30_000
    short = Publisher(r, history_ttl=0.2)
    short.publish("g", "b")
    assert 0 < r.pttl("taskstream:g") <= 200
    # Redis expires it by itself; poll its state (there is no event to await).
    eventually("the history key to expire", lambda: True if r.exists("taskstream:g") == 0 else None)


def test_payload_encoding(redis_server: RedisServer) -> None:
    r = redis_server.client()
    pub = Publisher(r)
    cases: list[tuple[Any, bytes]] = [
        ({"a": [1, 2.5, None, True]}, b'{"a":[1,2.5,null,true]}'),
        ([1, "é"], '[1,"é"]'.encode()),
        (42, b"42"),
        ("not json {", b"not json {"),
        (b'{"raw":1}', b'{"raw":1}'),
        (bytearray(b"ba"), b"ba"),
        ("ünïcode", "ünïcode".encode()),
    ]
    for data, _ in cases:
        pub.publish("g", data)
    assert [f[b"d"] for _, f in r.xrange("taskstream:g")] == [want for _, want in cases]


@pytest.mark.parametrize("data", ["\x1e1-1\x1eforged", b"\x1eforged", bytearray(b"\x1e")])
def test_payloads_starting_with_the_envelope_byte_are_refused(
    redis_server: RedisServer, data: Any
) -> None:
    r = redis_server.client()
    pub = Publisher(r)
    for history in (True, False):
        with pytest.raises(PayloadError, match="0x1e"):
            pub.publish("g", data, history=history)
    assert r.exists("taskstream:g") == 0


def test_bad_input_is_refused_before_redis(redis_server: RedisServer) -> None:
    r = redis_server.client()
    pub = Publisher(r)
    with pytest.raises(PayloadError, match="UTF-8"):
        pub.publish("g", b"\xff\xfe")
    with pytest.raises(PayloadError, match="JSON"):
        pub.publish("g", {"when": object()})
    for group in ["", "has space", "tab\t", "x" * 201, "nl\n"]:
        with pytest.raises(PayloadError, match="group"):
            pub.publish(group, "x")
    assert pub.channel("x" * 200) == "taskstream:" + "x" * 200
    with pytest.raises(PayloadError, match="history_size"):
        Publisher(r, history_size=0)
    with pytest.raises(PayloadError, match="history_ttl"):
        Publisher(r, history_ttl=0)
    assert r.keys("*") == []


def test_clients_with_decoded_responses_and_script_cache_flushes(redis_server: RedisServer) -> None:
    r = redis_server.client(decode_responses=True)
    pub = Publisher(r)
    first = pub.publish("g", "a")
    assert isinstance(first, str) and ID.match(first)
    # A Redis that forgot the script (restart, SCRIPT FLUSH): EVALSHA falls back to EVAL.
    r.script_flush()
    second = pub.publish("g", "b")
    assert second is not None and id_key(second) > id_key(first)
    assert r.xlen("taskstream:g") == 2


def test_the_script_refuses_nonsense_arguments(redis_server: RedisServer) -> None:
    r = redis_server.client()
    with pytest.raises(redis.ResponseError, match="positive integers"):
        r.eval(PUBLISH_SCRIPT, 1, "taskstream:g", "x", 0, 1000)
    with pytest.raises(redis.ResponseError, match="positive integers"):
        r.eval(PUBLISH_SCRIPT, 1, "taskstream:g", "x", 10, "soon")


def test_concurrent_publishers_store_and_deliver_in_one_order(redis_server: RedisServer) -> None:
    """Stream order and live order agree under concurrency: the script is atomic."""
    threads, per_thread = 8, 50
    sub = Subscriber(redis_server, "taskstream:g")
    pub = Publisher.from_url(redis_server.url, history_size=1000)
    returned: list[str] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        for n in range(per_thread):
            event_id = pub.publish("g", {"t": t, "n": n})
            with lock:
                returned.append(str(event_id))

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(WAIT)
    total = threads * per_thread
    stored = redis_server.client().xrange("taskstream:g")
    assert len(stored) == total
    assert sorted(returned, key=id_key) == [i.decode() for i, _ in stored]
    live = [sub.next() for _ in range(total)]
    assert live == [b"\x1e" + i + b"\x1e" + f[b"d"] for i, f in stored]
    sub.close()
