"""Messages that kept failing, kept in a Redis list to inspect and replay.

A task lands here once its retries are spent (or on an error that no retry can fix); its
name, arguments and the error stay until replayed or purged.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import Reject

# How long a letter's count of automatic replays is remembered.
REPLAY_COUNT_TTL_S = 7 * 86400


def key(app: Celery) -> str:
    """The deployment's dead-letter list (plugin/celery_app.py names it)."""
    return str(app.conf.dead_letter_key)


class DeadLetterTask(Task):
    """Base task: a final failure is recorded in the dead-letter list, and a retry that
    cannot be sent (the broker is away) leaves the message to be delivered again."""

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("countdown"):
            # "Equal jitter": between half and all of the capped exponential wait, so a
            # retry budget is minutes whatever the draw (full jitter made most waits ~0 s).
            kwargs["countdown"] = kwargs["countdown"] * random.uniform(0.5, 1.0)
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
                  "retries": self.request.retries,
                  # An outage or overload that outlasted the retries: replayed on its own
                  # once the engine answers again (replay_when_healthy).
                  "transient": isinstance(exc, tuple(getattr(self, "autoretry_for", ())))}
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
        sent.append(_send(app, record))
    return sent


def _send(app: Celery, record: dict[str, Any], same_id: bool = False) -> str:
    return str(app.send_task(record["task"], args=record["args"], kwargs=record["kwargs"],
                             task_id=record["id"] if same_id else None).id)


def replay_when_healthy(app: Celery, limit: int, max_replays: int) -> int:
    """Send again up to ``limit`` letters that failed for an outage or overload and were
    replayed fewer than ``max_replays`` times (a worker calls this after a task succeeded, so
    the engine answers again); the others stay for an operator. A replay keeps its task id,
    so its count follows it. Returns how many."""
    r = client(app)
    counts = key(app) + ":replays"
    with r.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key(app), counts)
                records = [(raw, json.loads(raw)) for raw in pipe.lrange(key(app), 0, -1)]
                done = pipe.hgetall(counts)
                chosen = [(raw, rec) for raw, rec in records if rec.get("transient")
                          and int(done.get(str(rec["id"]).encode(), 0)) < max_replays][:limit]
                if not chosen:
                    return 0
                pipe.multi()
                for raw, rec in chosen:
                    pipe.lrem(key(app), 1, raw)  # type: ignore[arg-type]
                    pipe.hincrby(counts, str(rec["id"]), 1)
                pipe.expire(counts, REPLAY_COUNT_TTL_S)
                pipe.execute()
                break
            except redis.WatchError:
                continue
    for _, rec in chosen:
        _send(app, rec, same_id=True)
    return len(chosen)


def purge(app: Celery) -> int:
    r = client(app)
    count = int(r.llen(key(app)))
    r.delete(key(app))
    return count


def _without_user(record: dict[str, Any], user_id: str) -> dict[str, Any] | None:
    """The record with this user's events and ids taken out; None when nothing else is left."""
    args = list(record.get("args") or [])
    if not args or not isinstance(args[0], list | str):
        return record
    if record.get("task") == "es_interest.rebuild_user":
        return None if args[0] == user_id else record
    if isinstance(args[0], list):
        kept = [item for item in args[0] if item != user_id and not (
            isinstance(item, dict) and item.get("user_id") == user_id)]
        if len(kept) == len(args[0]):
            return record
        return {**record, "args": [kept, *args[1:]]} if kept else None
    return record


def drop_user(app: Celery, user_id: str) -> int:
    """Take an erased user's events (and rebuilds) out of every dead letter; returns how many
    letters changed. Letters left empty go."""
    r = client(app)
    with r.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key(app))
                records = [json.loads(raw) for raw in pipe.lrange(key(app), 0, -1)]
                kept = [_without_user(record, user_id) for record in records]
                changed = sum(1 for old, new in zip(records, kept, strict=True) if old != new)
                if changed:
                    pipe.multi()
                    pipe.delete(key(app))
                    remaining = [json.dumps(record) for record in kept if record is not None]
                    if remaining:
                        pipe.rpush(key(app), *remaining)
                    pipe.execute()
                return changed
            except redis.WatchError:
                continue  # a letter arrived meanwhile: read them again
