"""The Channels layer on a real Django, a real redis-server and the real sidecar binary:
`get_channel_layer()` builds it from CHANNEL_LAYERS, `async_to_sync(group_send)` (a Celery task)
and `await group_send` (async code) publish with history, a `taskstream.v1` client resumes from
the ids, and a page gets the same frames as from channels_redis through the sidecar's Channels
modes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from unittest import mock
from typing import Any, Callable, Iterator, Optional

import django
import pytest
from django.conf import settings

if not settings.configured:
    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
        USE_TZ=True,
    )
    django.setup()

from asgiref.sync import async_to_sync  # noqa: E402
from channels.layers import BaseChannelLayer, get_channel_layer  # noqa: E402
from django.test.utils import override_settings  # noqa: E402
from websockets.sync.client import ClientConnection, connect  # noqa: E402

from conftest import WAIT, RedisServer, Sidecar, eventually  # noqa: E402
import taskstream.channels  # noqa: E402
from taskstream import PayloadError  # noqa: E402
from taskstream.channels import (  # noqa: E402
    ChannelLayerUnsupported,
    TaskStreamChannelLayer,
    message_event,
)

BACKEND = "taskstream.channels.TaskStreamChannelLayer"


def layer_settings(url: str, **config: Any) -> dict[str, Any]:
    return {"default": {"BACKEND": BACKEND, "CONFIG": {"url": url, **config}}}


@pytest.fixture
def layer(redis_server: RedisServer) -> Iterator[TaskStreamChannelLayer]:
    with override_settings(CHANNEL_LAYERS=layer_settings(redis_server.url, history_size=20)):
        yield get_channel_layer()


def stored(server: RedisServer, group: str) -> list[tuple[str, Any]]:
    return [
        (i.decode(), json.loads(f[b"d"]))
        for i, f in server.client().xrange(f"taskstream:{group}")
    ]


def clients(server: RedisServer) -> int:
    """Connections to `server`, this query's own included (closed before the next one)."""
    with server.client() as c:
        return len(c.client_list())


def in_thread(f: Callable[[], Any]) -> Any:
    """Runs `f` in a new plain thread (as a Celery worker's task runs) and returns its result."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(f())
        except BaseException as e:  # re-raised in the test's thread
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(WAIT)
    assert not t.is_alive(), "the thread did not finish within the wait"
    if errors:
        raise errors[0]
    return result[0]


def test_get_channel_layer_builds_it_from_settings(redis_server: RedisServer) -> None:
    config = layer_settings(
        redis_server.url, prefix="ts:", history_size=5, history_ttl=30, message="full"
    )
    with override_settings(CHANNEL_LAYERS=config):
        layer = get_channel_layer()
        assert isinstance(layer, TaskStreamChannelLayer)
        assert isinstance(layer, BaseChannelLayer)
        assert "groups" in layer.extensions
        assert (layer.prefix, layer.history_size, layer.history_ttl) == ("ts:", 5, 30)
        assert get_channel_layer() is layer, "one layer per alias, as channels caches it"


def test_async_to_sync_from_plain_threads_publishes_with_history_and_leaks_no_connection(
    layer: TaskStreamChannelLayer, redis_server: RedisServer
) -> None:
    baseline = clients(redis_server)
    ids = []
    for n in range(20):
        # What a Celery task does: sync code, a fresh event loop per call.
        message = {"type": "task.progress", "data": {"task": "t1", "percent": n * 5}}
        ids.append(in_thread(lambda m=message: async_to_sync(layer.group_send)("user_1_tasks", m)))
    assert stored(redis_server, "user_1_tasks") == [
        (i, {"task": "t1", "percent": n * 5}) for n, i in enumerate(ids)
    ]
    # Each call's loop closed its client with it.
    eventually(
        "the per-loop clients to close",
        lambda: True if clients(redis_server) == baseline else None,
    )


def test_await_from_async_code_reuses_one_client_per_loop(
    layer: TaskStreamChannelLayer, redis_server: RedisServer
) -> None:
    baseline = clients(redis_server)

    async def main() -> list[Optional[str]]:
        ids = [await layer.group_send("g", {"type": "t", "data": n}) for n in range(5)]
        assert clients(redis_server) == baseline + 1, "one connection for the loop"
        return ids

    first = asyncio.run(main())
    second = asyncio.run(main())  # a new loop: a new client, not the closed loop's one
    assert [d for _, d in stored(redis_server, "g")] == [0, 1, 2, 3, 4] * 2
    assert [i for i, _ in stored(redis_server, "g")] == first + second
    eventually("the clients to close", lambda: True if clients(redis_server) == baseline else None)


def test_two_layers_on_one_loop_and_an_explicit_close(redis_server: RedisServer) -> None:
    baseline = clients(redis_server)
    a = TaskStreamChannelLayer(redis_server.url)
    b = TaskStreamChannelLayer(redis_server.url, prefix="other:")

    async def main() -> None:
        await a.group_send("g", {"type": "t", "data": 1})
        await b.group_send("g", {"type": "t", "data": 2})
        await a.close()
        await a.group_send("g", {"type": "t", "data": 3})  # a new client after close()
        assert clients(redis_server) == baseline + 2

    loop = asyncio.new_event_loop()
    loop.run_until_complete(main())
    loop.close()  # both layers' hooks run, each closing its own client
    assert loop.is_closed() and "close" not in vars(loop)
    assert [d for _, d in stored(redis_server, "g")] == [1, 3]
    assert redis_server.client().xlen("other:g") == 1
    eventually("the clients to close", lambda: True if clients(redis_server) == baseline else None)


def test_the_message_mapping_matches_the_sidecars_channels_modes() -> None:
    message = {
        "type": "task.progress",
        "data": {"b": b"\x00\xff", "nan": float("nan"), 1: "int key", "l": (1, "x"), "n": None},
        "__asgi_channel__": "specific.abc!g",
    }
    assert json.loads(message_event(message)) == {
        "b": "AP8=", "nan": None, "1": "int key", "l": [1, "x"], "n": None,
    }
    full = json.loads(message_event(message, "full"))
    assert list(full) == ["type", "data"] and full["type"] == "task.progress"
    assert message_event({"type": "t", "data": "text"}) == b'"text"', "data is always JSON"
    assert message_event({"type": "t", "data": {"é": 1.5}}) == '{"é":1.5}'.encode()
    with pytest.raises(PayloadError, match="no 'data' field.*'full'"):
        message_event({"type": "t", "text": "x"})
    with pytest.raises(PayloadError, match="not JSON-serialisable"):
        message_event({"type": "t", "data": object()})
    with pytest.raises(PayloadError, match="mode"):
        message_event({"type": "t", "data": 1}, "whole")


def to_frame(group: str, message: dict[str, Any]) -> Any:
    """A custom mapping (used by dotted path below): the consumer's per-type handler."""
    if message["type"] == "task.log":
        return None  # the consumer never forwarded these
    return {"kind": message["type"], "group": group, **message["data"]}


def test_a_custom_mapping_by_function_or_dotted_path(redis_server: RedisServer) -> None:
    for mapping in (to_frame, "test_channels.to_frame"):
        layer = TaskStreamChannelLayer(redis_server.url, message=mapping)
        send = async_to_sync(layer.group_send)
        assert send("g", {"type": "task.log", "data": {}}) is None
        event_id = send("g", {"type": "task.progress", "data": {"percent": 5}})
        assert stored(redis_server, "g")[-1] == (
            event_id, {"kind": "task.progress", "group": "g", "percent": 5}
        )
    with pytest.raises(PayloadError, match="cannot import"):
        TaskStreamChannelLayer(redis_server.url, message="test_channels.nope")


def test_bad_messages_and_group_names_fail_in_the_caller(
    layer: TaskStreamChannelLayer, redis_server: RedisServer
) -> None:
    send = async_to_sync(layer.group_send)
    # Channels' group name rule (its TypeError), so names work with channels_redis too.
    for bad in ("user:1", "a b", "x" * 100, "", 7):
        with pytest.raises(TypeError, match="group name"):
            send(bad, {"type": "t", "data": 1})
    with pytest.raises(PayloadError, match="must be a dict"):
        send("g", ["type", "t"])
    with pytest.raises(PayloadError, match="string 'type'"):
        send("g", {"data": 1})
    with pytest.raises(PayloadError, match="no 'data'"):
        send("g", {"type": "t"})
    assert not redis_server.client().exists("taskstream:g"), "nothing was published"


def test_bad_config_is_refused_at_start() -> None:
    with pytest.raises(PayloadError, match="'url'"):
        TaskStreamChannelLayer()
    with pytest.raises(PayloadError, match="unknown CONFIG key.*hosts.*it takes url"):
        TaskStreamChannelLayer("redis://x", hosts=[("localhost", 6379)])
    with pytest.raises(PayloadError, match="history_size"):
        TaskStreamChannelLayer("redis://x", history_size=0)
    with pytest.raises(PayloadError, match="history_ttl"):
        TaskStreamChannelLayer("redis://x", history_ttl=0)
    with pytest.raises(PayloadError, match="'message'"):
        TaskStreamChannelLayer("redis://x", message="whole")
    # channels_redis's prefix left in place: the sidecar would not hear a thing.
    # (The logger itself, patched: Celery's and Django's logging set-up in other tests of this
    # process change where records go.)
    with mock.patch.object(taskstream.channels.logger, "warning") as warning:
        TaskStreamChannelLayer("redis://x", prefix="asgi")
    assert "--channel-prefix" in warning.call_args.args[0]


def test_consumer_methods_say_the_sidecar_holds_the_sockets(
    layer: TaskStreamChannelLayer,
) -> None:
    calls = [
        lambda: layer.send("specific.x!y", {"type": "t"}),
        lambda: layer.receive("specific.x!y"),
        lambda: layer.new_channel(),
        lambda: layer.group_add("g", "specific.x!y"),
        lambda: layer.group_discard("g", "specific.x!y"),
    ]
    for call in calls:
        with pytest.raises(ChannelLayerUnsupported, match="sidecar holds the WebSocket"):
            asyncio.run(call())
    assert issubclass(ChannelLayerUnsupported, NotImplementedError)


def test_channels_stays_optional() -> None:
    """Without channels (or Django) installed, the package imports and the layer publishes."""
    code = (
        "import sys; sys.modules['channels'] = None; sys.modules['django'] = None\n"
        "import taskstream, taskstream.channels as c, asyncio\n"
        "assert c.TaskStreamChannelLayer.__mro__[1] is object\n"
        f"layer = c.TaskStreamChannelLayer({URL!r})\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT)
    assert out.returncode == 0, out.stderr
    out = subprocess.run(
        [sys.executable, "-c", "import sys, taskstream; assert 'channels' not in sys.modules"],
        capture_output=True, text=True, timeout=WAIT,
    )
    assert out.returncode == 0, out.stderr


URL = "redis://127.0.0.1:1"  # never connected to: the layer connects on the first group_send


# -- through the real sidecar ------------------------------------------------------------------


def ws(sidecar: Sidecar, query: str) -> ClientConnection:
    v1 = ["taskstream.v1"]
    return connect(sidecar.ws_url(query), subprotocols=v1, open_timeout=WAIT)  # type: ignore[arg-type]


def frames(conn: ClientConnection, n: int) -> list[Any]:
    return [json.loads(conn.recv(timeout=WAIT)) for _ in range(n)]


def test_a_v1_client_resumes_from_the_ids_of_group_send(
    layer: TaskStreamChannelLayer,
    redis_server: RedisServer,
    start_sidecar: Callable[..., Sidecar],
) -> None:
    sc = start_sidecar("--auth", "none", "--redis-url", redis_server.url, "--history-size", "20")
    send = async_to_sync(layer.group_send)
    with ws(sc, "groups=user_1_tasks&last_id=user_1_tasks:0") as live:
        ids = [
            send("user_1_tasks", {"type": "task.progress", "data": {"percent": p}})
            for p in (10, 20, 30)
        ]
        assert frames(live, 3) == [
            {"type": "event", "group": "user_1_tasks", "id": i, "data": {"percent": p}}
            for i, p in zip(ids, (10, 20, 30))
        ]
    # A page that saw only the first event resumes right after it (what it missed meanwhile too).
    ids.append(send("user_1_tasks", {"type": "task.progress", "data": {"percent": 40}}))
    with ws(sc, f"groups=user_1_tasks&last_id=user_1_tasks:{ids[0]}") as resumed:
        assert [(f["id"], f["data"]["percent"]) for f in frames(resumed, 3)] == [
            (ids[1], 20), (ids[2], 30), (ids[3], 40)
        ]


MESSAGES = [
    {"type": "task.progress", "data": {"task": "t1", "percent": 40, "ok": True, "f": 1.5}},
    {"type": "task.note", "data": "plain text"},
    {"type": "x", "data": {"b": b"\x00\xff", "nan": float("nan"), 1: "int key", "l": (1, "x")}},
    {"type": "x", "data": [1, None, {"é": "ü"}], "extra": 1},
]


@pytest.mark.parametrize("mode", ["data", "full"])
def test_the_same_page_gets_the_same_frames_as_through_the_channels_modes(
    mode: str, redis_server: RedisServer, start_sidecar: Callable[..., Sidecar]
) -> None:
    """channels_redis's group_send through `--redis-protocol channels-pubsub` and this layer's
    through `--redis-protocol pubsub --history-size`: same group name, same data."""
    at_most_once = start_sidecar(
        "--auth", "none", "--redis-url", redis_server.url,
        "--redis-protocol", "channels-pubsub", "--channels-message", mode,
    )
    reliable = start_sidecar(
        "--auth", "none", "--redis-url", redis_server.url, "--history-size", "20",
    )
    layers = {
        "channels_redis": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [redis_server.url]},
        },
        "taskstream": {"BACKEND": BACKEND, "CONFIG": {"url": redis_server.url, "message": mode}},
    }
    with override_settings(CHANNEL_LAYERS=layers):
        plain = async_to_sync(get_channel_layer("channels_redis").group_send)
        history = async_to_sync(get_channel_layer("taskstream").group_send)
        with ws(at_most_once, "groups=g1") as a, ws(reliable, "groups=g1&last_id=g1:0") as b:
            # Pub/sub without history: send only once the sidecar listens.
            listeners = lambda: redis_server.client().pubsub_numsub("asgi__group__g1")[0][1]
            eventually("the channels-pubsub sidecar's subscription", lambda: listeners() or None)
            for message in MESSAGES:
                plain("g1", message)
                history("g1", message)
            got_a, got_b = frames(a, len(MESSAGES)), frames(b, len(MESSAGES))
    assert [f["data"] for f in got_a] == [f["data"] for f in got_b]
    assert all("id" in f for f in got_b) and not any("id" in f for f in got_a)
    assert got_b[0]["data"] == (
        MESSAGES[0]["data"] if mode == "data" else {"type": "task.progress", **MESSAGES[0]}
    )
