"""Messages that kept failing, kept in a Redis list to inspect and replay.

A task lands here once its retries are spent (or on an error that no retry can fix); its
name, arguments and the error stay until replayed or purged.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import Reject


def key(app: Celery) -> str:
    """The deployment's dead-letter list (plugin/celery_app.py names it)."""
    return str(app.conf.dead_letter_key)


class DeadLetterTask(Task):
    """Base task: a final failure is recorded in the dead-letter list, and a retry that
    cannot be sent (the broker is away) leaves the message to be delivered again."""

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().retry(*args, **kwargs)
        except Reject as rejected:
            # Celery drops the message (requeue=False) when it cannot publish the retry, which
            # lost whole batches during a Redis restart. Requeue it instead; if even that
            # cannot reach Redis, the unacknowledged message comes back after the visibility
            # timeout. The batch is idempotent, so a second delivery costs nothing.
            if rejected.requeue:
                raise
            raise Reject(rejected.reason, requeue=True) from rejected

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                   einfo: Any) -> None:
        record = {"task": self.name, "id": task_id, "args": list(args), "kwargs": dict(kwargs),
                  "error": f"{type(exc).__name__}: {exc}", "failed_at": time.time(),
                  "retries": self.request.retries}
        client(self.app).rpush(key(self.app), json.dumps(record))


def client(app: Celery) -> redis.Redis:
    return redis.Redis.from_url(app.conf.broker_url)


def entries(app: Celery) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client(app).lrange(key(app), 0, -1)]


def replay(app: Celery, limit: int | None = None) -> list[str]:
    """Send the oldest ``limit`` (default: all) dead letters again; returns new task ids."""
    r = client(app)
    sent: list[str] = []
    while limit is None or len(sent) < limit:
        raw = r.lpop(key(app))
        if raw is None:
            break
        record = json.loads(str(raw, "utf-8") if isinstance(raw, bytes) else str(raw))
        sent.append(app.send_task(record["task"], args=record["args"],
                                  kwargs=record["kwargs"]).id)
    return sent


def purge(app: Celery) -> int:
    r = client(app)
    count = int(r.llen(key(app)))
    r.delete(key(app))
    return count
