"""AsyncPublisher against a real redis-server (redis.asyncio), driven with asyncio.run."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio

from conftest import WAIT, RedisServer
from taskstream import AsyncPublisher, PayloadError


def test_async_publish_with_and_without_history(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with AsyncPublisher.from_url(redis_server.url, history_size=2) as pub:
            sub = pub.redis.pubsub()
            await sub.subscribe("taskstream:g")
            assert (await sub.get_message(timeout=WAIT))["type"] == "subscribe"
            ids = [await pub.publish("g", {"n": n}) for n in range(3)]
            assert await pub.publish("g", "live only", history=False) is None
            live = []
            for _ in range(4):
                msg = await sub.get_message(ignore_subscribe_messages=True, timeout=WAIT)
                assert msg is not None, "no message within the wait"
                live.append(msg["data"])
            assert live == [
                f'\x1e{ids[0]}\x1e{{"n":0}}'.encode(),
                f'\x1e{ids[1]}\x1e{{"n":1}}'.encode(),
                f'\x1e{ids[2]}\x1e{{"n":2}}'.encode(),
                b"live only",
            ]
            stored = await pub.redis.xrange("taskstream:g")
            assert [i.decode() for i, _ in stored] == ids[1:]
            await sub.aclose()

    asyncio.run(main())


def test_async_publisher_takes_a_client_and_validates(redis_server: RedisServer) -> None:
    async def main() -> None:
        client = redis.asyncio.Redis(port=redis_server.port, decode_responses=True)
        pub = AsyncPublisher(client, prefix="p:", history_size=1000)
        event_id = await pub.publish("g", b"x")
        assert isinstance(event_id, str)
        assert await client.xrange("p:g") == [(event_id, {"d": "x"})]
        with pytest.raises(PayloadError):
            await pub.publish("g", "\x1ex")
        with pytest.raises(PayloadError):
            await pub.publish("bad group", "x")
        # Many concurrent publishes on one connection pool: all stored, ids distinct and ordered.
        got = await asyncio.gather(*(pub.publish("g", str(n)) for n in range(100)))
        stored = await client.xrange("p:g")
        assert len(stored) == 101 and len(set(got)) == 100
        assert [i for i, _ in stored[1:]] == sorted(got, key=lambda i: tuple(map(int, i.split("-"))))
        await pub.aclose()

    asyncio.run(main())
