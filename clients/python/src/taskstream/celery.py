"""Progress from Celery tasks in one call, in the event shape the JS client understands.

```python
from taskstream import Publisher
from taskstream.celery import Progress

progress = Progress(Publisher.from_url(REDIS_URL))

@app.task(bind=True)
def export(self, user_id):
    group = f"user:{user_id}"
    with progress.track(self, group) as report:   # "failed" (and re-raise) on an exception,
        for i, chunk in enumerate(chunks):         # "done" at 100 % when the block ends
            ...
            report(100 * (i + 1) // len(chunks), message=f"chunk {i + 1}")
```

or, without the block, `progress(self, group, 40, message="rendering")`. Every call publishes

    {"type": "progress", "task": "<celery task id>", "percent": 40,
     "state": "running" | "done" | "failed", "message": "rendering" | null}

with history by default, so a page that reconnects (or reloads with `last_id=<group>:0`) sees
every step. Nothing here imports Celery: `task` is a bound task (`bind=True`, its
`request.id` is used) or a task id string.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional

from .publisher import PayloadError, Publisher

__all__ = ["PROGRESS_STATES", "Progress", "progress_event", "task_id_of"]

#: The values of an event's `state`.
PROGRESS_STATES = ("running", "done", "failed")

TaskLike = Any  # a bound Celery task (has .request.id) or a task id string
Reporter = Callable[..., Optional[str]]


def task_id_of(task: TaskLike) -> str:
    """The id of a bound Celery task (`self` in a `bind=True` task), or `task` if it is a str."""
    if isinstance(task, str) and task:
        return task
    task_id = getattr(getattr(task, "request", None), "id", None)
    if not task_id:
        raise PayloadError(
            f"no task id in {task!r}: pass a bound task (bind=True) run by a worker, or the id"
        )
    return str(task_id)


def progress_event(
    task_id: str, percent: float, state: str = "running", message: Optional[str] = None
) -> Dict[str, Any]:
    """The progress event: `{"type": "progress", "task", "percent", "state", "message"}`."""
    if state not in PROGRESS_STATES:
        raise PayloadError(f"state must be one of {', '.join(PROGRESS_STATES)}, not {state!r}")
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 100:
        raise PayloadError(f"percent must be a number from 0 to 100, not {percent!r}")
    return {"type": "progress", "task": task_id, "percent": percent, "state": state, "message": message}


class Progress:
    """Reports progress of Celery tasks through a `Publisher` (history on unless `history=False`)."""

    def __init__(self, publisher: Publisher, *, history: bool = True) -> None:
        self.publisher = publisher
        self.history = history

    def __call__(
        self,
        task: TaskLike,
        group: str,
        percent: float,
        state: str = "running",
        message: Optional[str] = None,
    ) -> Optional[str]:
        """Publishes one progress event of `task` to `group`; returns its id (None without history)."""
        event = progress_event(task_id_of(task), percent, state, message)
        return self.publisher.publish(group, event, history=self.history)

    @contextmanager
    def track(
        self, task: TaskLike, group: str, *, done_message: Optional[str] = None
    ) -> Iterator[Reporter]:
        """Yields `report(percent, message=None)`; publishes `done` at 100 % when the block ends,
        or `failed` at the last percent (message: the exception) when it raises, and re-raises."""
        task_id = task_id_of(task)
        last_percent: float = 0
        finished = False

        def report(
            percent: float, message: Optional[str] = None, state: str = "running"
        ) -> Optional[str]:
            nonlocal last_percent, finished
            event_id = self(task_id, group, percent, state, message)
            last_percent, finished = percent, state != "running"
            return event_id

        try:
            yield report
        except BaseException as e:
            if not finished:
                self(task_id, group, last_percent, "failed", str(e) or type(e).__name__)
            raise
        if not finished:
            self(task_id, group, 100, "done", done_message)
