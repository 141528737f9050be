"""Celery tasks: thin, idempotent wrappers over plugin.pipeline, one Services per process.

Shared tasks: they belong to whichever app the worker runs (``plugin.celery_app.make_celery``
includes this module), so nothing here builds an app.

Transient engine or Redis errors, the engine refusing for load (429, 502-504: a circuit
breaker, full queues) and a user document that kept changing are retried with capped
exponential backoff for minutes; a task that still fails goes to the dead-letter list, and
those that failed for an outage are sent again once a task succeeds (the engine is back).
"""

from __future__ import annotations

import functools
import gc
import os
import socket
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

import redis
from celery import current_app, shared_task

from plugin import dead_letter, partitions, pipeline
from plugin.dead_letter import DeadLetterTask
from plugin.engine import EngineBusy, transient_errors
from plugin.pipeline import behaviour, popularity
from plugin.services import Services

TRANSIENT: tuple[type[BaseException], ...] = (
    *transient_errors(),
    redis.ConnectionError,
    redis.TimeoutError,
    pipeline.ConcurrentUpdateError,
    # A rebuild of a user whose events are still in flight waits for them, as before.
    pipeline.EventsInFlight,
    EngineBusy,
)
F = TypeVar("F", bound=Callable[..., Any])
# Capped exponential backoff (1, 2, 4 ... 60 s, each drawn from half to all of it by
# DeadLetterTask) over 20 retries: an engine that refuses for load, or an outage, has 7 to 15
# minutes to recover before a batch becomes a dead letter. Every wait stays below the
# visibility timeout, or a waiting retry would be delivered twice.
RETRY = {
    "base": DeadLetterTask,
    "autoretry_for": TRANSIENT,
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": False,
    "max_retries": 20,
    "default_retry_delay": 10,
}


def _fold_batches(calls: list[tuple[list[dict[str, Any]], bool, int | None]]
                  ) -> list[dict[str, Any]]:
    """Batches of one partition that waited for it, folded as one; a report each."""
    reports = pipeline.ingest_event_batches(
        services(), [events for events, _, _ in calls],
        refresh=any(refresh for _, refresh, _ in calls),
        accepted_at_ms=min((a for _, _, a in calls if a is not None), default=None))
    return [report.as_dict() for report in reports]


# A threads pool folds different partitions at once, and the batches of a partition that
# arrive during its fold together next (partitions.GroupCommit).
PARTITION_FOLDS = partitions.GroupCommit(_fold_batches)
# After a task succeeded (the engine answers), letters an outage left are sent again: this
# many at a time, at most once a minute, and each at most this many times.
AUTO_REPLAY_LIMIT, AUTO_REPLAY_MAX = 100, 3


@lru_cache(maxsize=1)
def services() -> Services:
    # Created lazily inside each worker process (after the fork), never in the parent.
    return Services()


def busy_is_transient(task: F) -> F:
    """A whole request the engine refused for load becomes :class:`EngineBusy`, retried."""

    @functools.wraps(task)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except Exception as exc:
            if not isinstance(exc, EngineBusy) and services().engine.is_busy(exc):
                raise EngineBusy(f"the engine refused for load: {exc}") from exc
            raise

    return wrapped  # type: ignore[return-value]


@shared_task(name="es_interest.ping")
def ping(load_model: bool = True) -> dict[str, Any]:
    """Proves a worker is alive and (unless ``load_model`` is false) can use the model:
    embeds a word. A worker that only folds events never needs the model, so a check of its
    liveness should not load it."""
    # frozen_objects: what start-up left out of the cyclic collector's walks (plugin/cli.py).
    reply: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname(),
                             "frozen_objects": gc.get_freeze_count()}
    if load_model:
        reply["dims"] = len(services().embedder.encode_one("ping"))
    return reply


@shared_task(name="es_interest.index_documents", **RETRY)
@busy_is_transient
def index_documents(docs: list[dict[str, Any]], refresh: bool = False) -> dict[str, Any]:
    report = pipeline.index_documents(services(), docs, refresh=refresh)
    _schedule_popularity_flush()
    _replay_dead_letters()
    return {**report.as_dict(), "worker_pid": os.getpid()}


@shared_task(name="es_interest.ingest_events", **RETRY)
@busy_is_transient
def ingest_events(events: list[dict[str, Any]], refresh: bool = False,
                  accepted_at_ms: int | None = None) -> dict[str, Any]:
    partition = partitions.batch_partition(events, services().settings.event_partitions)
    report = PARTITION_FOLDS(partition, (events, refresh, accepted_at_ms))
    _schedule_popularity_flush()
    _replay_dead_letters()
    if behaviour.training_due(services()):
        train_behaviour.apply_async(countdown=services().settings.behaviour_training_delay_s)
    return {**report, "worker_pid": os.getpid()}


def _replay_dead_letters() -> None:
    svc = services()
    if svc.redis.set(svc.settings.redis_key("dead-letter", "replayed"), 1, nx=True, ex=60):
        dead_letter.replay_when_healthy(current_app, AUTO_REPLAY_LIMIT, AUTO_REPLAY_MAX)


def _schedule_popularity_flush() -> None:
    """Coalesce documents' popularity writes: one flush per ES_INTEREST_POPULARITY_FLUSH_S."""
    if popularity.flush_due(services()):
        flush_popularity.apply_async(countdown=services().settings.popularity_flush_s)


@shared_task(name="es_interest.flush_popularity", **RETRY)
@busy_is_transient
def flush_popularity() -> dict[str, Any]:
    """Write changed documents' popularity (idempotent: values come from the states)."""
    return {"documents": popularity.flush(services())}


# Acknowledged on receipt, with its own time limit: a run may outlast the visibility timeout
# (it scans the whole log), and one lost run is harmless (the next due point or beat).
@shared_task(name="es_interest.train_behaviour", acks_late=False, time_limit=3600,
          soft_time_limit=3300)
def train_behaviour() -> dict[str, Any]:
    """A new version of the behaviour vectors, then every user re-folded. Scheduled when the
    event log doubled since the last run (behaviour.training_due), and by Celery beat every
    ES_INTEREST_BEHAVIOUR_TRAIN_HOURS."""
    result = behaviour.train(services(), refold=False)
    if result.get("trained"):
        # Users are re-folded in the new space by batch tasks (one scan and one bulk write
        # each), which the event tasks interleave with.
        batches = 0
        for batch in pipeline.user_batches(services()):
            rebuild_users.apply_async(args=[batch])
            batches += 1
        result["user_batches_queued_for_refold"] = batches
    return result


@shared_task(name="es_interest.rebuild_user", **RETRY)
@busy_is_transient
def rebuild_user(user_id: str) -> dict[str, Any]:
    return pipeline.rebuild_user(services(), user_id)


@shared_task(name="es_interest.erase_user", **RETRY)
@busy_is_transient
def erase_user(user_id: str, erased_at_ms: int) -> dict[str, Any]:
    """The erase once more, with the same time: what a batch in flight left is removed."""
    return pipeline.erase_user(services(), user_id, erased_at_ms)


@shared_task(name="es_interest.rebuild_users", bind=True, **RETRY)
@busy_is_transient
def rebuild_users(self: Any, user_ids: list[str]) -> dict[str, Any]:
    """Rebuild a batch of users; those whose events are still in flight are retried alone."""
    result = pipeline.rebuild_users(services(), user_ids)
    if result["deferred"]:
        raise self.retry(args=[result["deferred"]],
                         exc=pipeline.EventsInFlight(f"{len(result['deferred'])} users wait "
                                                     "for events still being stored"))
    return result
