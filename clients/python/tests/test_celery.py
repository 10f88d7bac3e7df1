"""The Celery helper: event shape and validation, `track` (done/failed), and a real Celery
worker (in-process, Redis broker) publishing progress with history."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from conftest import WAIT, RedisServer
from taskstream import PayloadError, Publisher
from taskstream.celery import Progress, progress_event, task_id_of


def events(server: RedisServer, group: str = "g") -> list[dict[str, Any]]:
    return [json.loads(f[b"d"]) for _, f in server.client().xrange(f"taskstream:{group}")]


def test_progress_event_shape_and_validation() -> None:
    assert progress_event("t1", 40, message="rendering") == {
        "type": "progress", "task": "t1", "percent": 40, "state": "running", "message": "rendering",
    }
    assert progress_event("t1", 100, "done")["message"] is None
    for bad in (-1, 101, "40", True, float("nan")):
        with pytest.raises(PayloadError, match="percent"):
            progress_event("t1", bad)  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match="state"):
        progress_event("t1", 1, "finished")
    with pytest.raises(PayloadError, match="task id"):
        task_id_of(object())
    assert task_id_of("abc") == "abc"


def test_track_reports_done_at_the_end(redis_server: RedisServer) -> None:
    progress = Progress(Publisher(redis_server.client()))
    with progress.track("t1", "g") as report:
        assert report(10, message="one") is not None
        report(55.5)
    assert events(redis_server) == [
        progress_event("t1", 10, message="one"),
        progress_event("t1", 55.5),
        progress_event("t1", 100, "done"),
    ]


def test_track_reports_failed_with_the_error_and_reraises(redis_server: RedisServer) -> None:
    progress = Progress(Publisher(redis_server.client()))
    with pytest.raises(RuntimeError, match="disk full"):
        with progress.track("t2", "g") as report:
            report(30)
            raise RuntimeError("disk full")
    assert events(redis_server)[-1] == progress_event("t2", 30, "failed", "disk full")
    # A block that finished the task itself gets no second final event.
    with progress.track("t3", "g") as report:
        report(100, state="done", message="exported 3 rows")
    assert [e for e in events(redis_server) if e["task"] == "t3"] == [
        progress_event("t3", 100, "done", "exported 3 rows")
    ]


def test_history_off_publishes_live_only(redis_server: RedisServer) -> None:
    r = redis_server.client()
    sub = r.pubsub()
    sub.subscribe("taskstream:g")
    assert sub.get_message(timeout=WAIT)["type"] == "subscribe"
    Progress(Publisher(r), history=False)("t1", "g", 5)
    msg = sub.get_message(timeout=WAIT)
    assert msg is not None and json.loads(msg["data"]) == progress_event("t1", 5)
    assert r.exists("taskstream:g") == 0
    sub.close()


@pytest.fixture
def celery_app(redis_server: RedisServer) -> Iterator[Celery]:
    app = Celery("taskstream_test", broker=redis_server.url + "/1", backend=redis_server.url + "/2")
    app.conf.update(broker_connection_retry_on_startup=False, worker_hijack_root_logger=False)
    yield app


def test_a_real_worker_reports_progress_with_history(
    redis_server: RedisServer, celery_app: Celery
) -> None:
    progress = Progress(Publisher.from_url(redis_server.url))

    @celery_app.task(bind=True, name="export")
    def export(self: Any, user_id: int, steps: int) -> str:
        with progress.track(self, f"user:{user_id}") as report:
            for i in range(1, steps):
                report(100 * i // steps, message=f"step {i}")
        return str(self.request.id)

    sub = redis_server.client().pubsub()
    sub.subscribe("taskstream:user:7")
    assert sub.get_message(timeout=WAIT)["type"] == "subscribe"
    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=WAIT):
        result = export.delay(7, 4)
        assert result.get(timeout=WAIT) == result.id
    want = [
        progress_event(result.id, 25, message="step 1"),
        progress_event(result.id, 50, message="step 2"),
        progress_event(result.id, 75, message="step 3"),
        progress_event(result.id, 100, "done"),
    ]
    assert events(redis_server, "user:7") == want
    for event in want:  # the live copies, enveloped with their ids, in the same order
        msg = sub.get_message(timeout=WAIT)
        assert msg is not None
        _, event_id, payload = msg["data"].split(b"\x1e", 2)
        assert json.loads(payload) == event and event_id
    sub.close()
