"""The Django helper on a real Django (SQLite) and a real redis-server: events leave only after
the transaction commits, never on rollback, and groups follow the sidecar's --user-group."""

from __future__ import annotations

import datetime
import decimal
import json
import uuid
from typing import Any, Iterator

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

from django.db import transaction  # noqa: E402
from django.test.utils import override_settings  # noqa: E402

from conftest import RedisServer  # noqa: E402
from taskstream import PayloadError  # noqa: E402
from taskstream.django import (  # noqa: E402
    get_publisher,
    publish_on_commit,
    publish_to_user,
    user_group,
)


@pytest.fixture
def configured(redis_server: RedisServer) -> Iterator[RedisServer]:
    with override_settings(TASKSTREAM={"REDIS_URL": redis_server.url, "HISTORY_SIZE": 10}):
        yield redis_server


def stored(server: RedisServer, group: str) -> list[Any]:
    return [json.loads(f[b"d"]) for _, f in server.client().xrange(f"taskstream:{group}")]


class User:
    def __init__(self, pk: Any) -> None:
        self.pk = pk


def test_user_group_follows_the_sidecars_template(configured: RedisServer) -> None:
    assert user_group(User(42)) == "user:42"
    assert user_group(7) == "user:7"
    assert user_group(User(42), "user_{sub}_tasks") == "user_42_tasks"
    with override_settings(TASKSTREAM={"REDIS_URL": "redis://x", "USER_GROUP": "u-{sub}"}):
        assert user_group(User("ab")) == "u-ab"
    with pytest.raises(PayloadError, match="no pk"):
        user_group(User(None))


def test_events_leave_after_commit_and_never_on_rollback(configured: RedisServer) -> None:
    with transaction.atomic():
        publish_to_user(User(1), {"n": 1})
        assert stored(configured, "user:1") == []  # not yet: the row is not committed
    assert stored(configured, "user:1") == [{"n": 1}]

    with pytest.raises(RuntimeError):
        with transaction.atomic():
            publish_to_user(User(1), {"n": 2})
            raise RuntimeError("rollback")
    assert stored(configured, "user:1") == [{"n": 1}]

    # Outside a transaction (autocommit): at once.
    publish_on_commit("team:3", "now")
    assert configured.client().xrange("taskstream:team:3")[0][1] == {b"d": b"now"}


def test_bad_input_fails_in_the_caller_not_after_commit(configured: RedisServer) -> None:
    with transaction.atomic():
        with pytest.raises(PayloadError):
            publish_on_commit("bad group", {"n": 1})
        with pytest.raises(PayloadError):
            publish_on_commit("g", {"x": object()})
    assert configured.client().keys("*") == []


def test_django_types_are_encoded_and_history_is_optional(configured: RedisServer) -> None:
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    uid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    publish_on_commit("g", {"at": when, "price": decimal.Decimal("1.50"), "id": uid})
    assert stored(configured, "g") == [
        {"at": "2026-01-02T03:04:05Z", "price": "1.50", "id": str(uid)}
    ]
    sub = configured.client().pubsub()
    sub.subscribe("taskstream:live")
    assert sub.get_message(timeout=10)["type"] == "subscribe"
    publish_on_commit("live", {"n": 1}, history=False)
    msg = sub.get_message(timeout=10)
    assert msg is not None and msg["data"] == b'{"n":1}'
    assert configured.client().exists("taskstream:live") == 0
    sub.close()


def test_the_publisher_follows_the_settings(redis_server: RedisServer) -> None:
    with override_settings(TASKSTREAM={"REDIS_URL": redis_server.url, "PREFIX": "a:",
                                       "HISTORY_SIZE": 3, "HISTORY_TTL": 5}):
        pub = get_publisher()
        assert (pub.prefix, pub.history_size, pub.history_ttl_ms) == ("a:", 3, 5000)
        assert get_publisher() is pub
    with override_settings(TASKSTREAM={}):
        with pytest.raises(PayloadError, match="REDIS_URL"):
            get_publisher()
