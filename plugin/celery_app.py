"""The Celery app factory, configured explicitly: Redis broker and backend, JSON only, late
acks, every key in the deployment's namespace. Clients (the API, the command line) and the
worker entry point (``workers/``) build their app here; nothing is built at import time."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis
from celery import Celery

from plugin import partitions
from plugin.config import Settings

DOCUMENTS_QUEUE = "documents"
DEFAULT_QUEUE = "celery"  # Celery's own default: the other tasks (training, flushes)


def deployment_queues(partition_count: int) -> list[str]:
    """Every queue some worker of the deployment must consume: documents, the default one
    and each event partition's."""
    return [DOCUMENTS_QUEUE, DEFAULT_QUEUE, *partitions.all_queues(partition_count)]


class WithheldTaskResults(logging.Filter):
    """A worker logs each task's result at info level: a batch's report lists the ids users
    sent (events, documents, error reasons). The line keeps the task, its id and its time."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict) and "return_value" in record.args:
            record.args = {**record.args, "return_value": "(withheld: see the task's result)"}
        return True


WITHHELD_TASK_RESULTS = WithheldTaskResults()


def make_celery(settings: Settings) -> Celery:
    # (addFilter ignores a filter it already has: every app of the process shares one.)
    logging.getLogger("celery.app.trace").addFilter(WITHHELD_TASK_RESULTS)
    # Every key of the broker and the results sits under this deployment's namespace: two
    # deployments on one Redis never take each other's messages (README, With Docker).
    keyprefix = {"global_keyprefix": settings.redis_key("celery") + ":"}
    celery = Celery("es_interest", broker=settings.redis_url, backend=settings.redis_url,
                    include=["workers.tasks"])
    if urlsplit(settings.redis_url).scheme in ("redis", "rediss"):
        # (A rediss:// URL carries its TLS settings, ``ssl_cert_reqs`` and the CA, which the
        # result backend requires and Celery hands to the transport; a Unix socket keeps
        # kombu's own transport.)
        celery.conf.broker_transport = "plugin.broker:RedisTransport"
    celery.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # A task is acknowledged only once it finished, and requeued if its worker died
        # mid-way: every task is idempotent (documents by id, events by event_id).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One reserved message per pool slot: a busy process never sits on a batch that an idle
        # one could fold (freshness), and batches are large enough to keep slots busy.
        worker_prefetch_multiplier=1,
        # A task must end (or be killed) before its message would be handed to another
        # worker: the limits sit below the visibility timeout, which bounds how long a batch
        # of a dead worker waits (folded events then wait for their store just as long).
        task_time_limit=int(settings.task_visibility_s * 0.85),
        task_soft_time_limit=int(settings.task_visibility_s * 0.75),
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.task_visibility_s,
            # Sweep for expired messages every ~1/12 of the timeout (kombu's default sweep
            # is ~100 s, which would add up to that to the gap).
            "unacked_restore_interval": max(1, int(settings.task_visibility_s / 12)),
            "unacked_restore_throttle": 1,
            # The sweep's lock outlives a Redis restart (append-only file); kombu's 300 s
            # default would hold every sweep off that long after one.
            "unacked_mutex_expire": max(5, int(settings.task_visibility_s / 4)),
            **keyprefix,
        },
        result_backend_transport_options=keyprefix,
        dead_letter_key=settings.redis_key("dead-letter"),
        worker_hijack_root_logger=False,
        # Embedding documents is CPU-bound, folding events is I/O-bound: separate queues let
        # each get the pool that suits it (README, Workers); events go to their users'
        # partition queues (plugin/partitions.py). Other tasks use the default queue.
        # `es-interest worker --beat` runs these: behaviour vectors retrained from the event
        # log, and a popularity flush now and then (workers schedule one after each change).
        beat_schedule={
            "train-behaviour": {"task": "es_interest.train_behaviour",
                                "schedule": settings.behaviour_train_interval_s},
            "flush-popularity": {"task": "es_interest.flush_popularity", "schedule": 60.0},
        },
        task_routes=[{"es_interest.index_documents": {"queue": DOCUMENTS_QUEUE}},
                     EventPartitionRouter(settings.event_partitions)],
        event_partitions=settings.event_partitions,
    )
    return celery


class EventPartitionRouter:
    """A batch of events goes to its first event's user's partition queue. Senders split
    batches by partition (``send_events``), so every event of a batch shares it; a retry or a
    replayed dead letter is routed the same way again."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __call__(self, name: str, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None,
                 options: Mapping[str, Any], task: Any = None, **_: Any) -> dict[str, str] | None:
        if name != "es_interest.ingest_events":
            return None
        events = args[0] if args else (kwargs or {}).get("events")
        return {"queue": partitions.queue_name(partitions.batch_partition(
            events if isinstance(events, list) else [], self.count))}


def waiting_event_batches(app: Celery, redis_client: redis.Redis, count: int) -> int:
    """Batches in the ``count`` partition queues, queued or delivered and not acknowledged."""
    prefix = app.conf.broker_transport_options["global_keyprefix"]
    queued = sum(int(redis_client.llen(prefix + partitions.queue_name(p)))
                 for p in range(count))
    names = {partitions.queue_name(p) for p in range(count)}
    held = 0
    for raw in redis_client.hvals(prefix + "unacked"):
        try:
            _, _, queue = json.loads(raw)
        except (ValueError, TypeError):
            continue
        held += queue in names
    return queued + held


def send_documents(app: Celery, docs: Sequence[Mapping[str, Any]], batch_size: int,
                   kwargs: Mapping[str, Any] | None = None) -> list[tuple[int, Any]]:
    """Queue documents for the workers in batches of at most ``batch_size``; returns each
    batch's size and its AsyncResult."""
    return _send(app, "es_interest.index_documents", docs, batch_size, kwargs)


def send_events(app: Celery, events: Sequence[Mapping[str, Any]], batch_size: int,
                kwargs: Mapping[str, Any] | None = None) -> list[tuple[int, Any]]:
    """Queue events for the workers: split by partition (one owner per user), then as
    ``send_documents``."""
    groups = partitions.split_by_partition(events, int(app.conf.event_partitions))
    return [sent for _, group in sorted(groups.items())
            for sent in _send(app, "es_interest.ingest_events", group, batch_size, kwargs)]


def _send(app: Celery, task: str, items: Sequence[Mapping[str, Any]], batch_size: int,
          kwargs: Mapping[str, Any] | None) -> list[tuple[int, Any]]:
    batches = [list(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]
    # The message's readable copy of its arguments (Celery's ``argsrepr``, shown by monitors
    # and task logs) names the count only: the items are what users sent, and Celery's repr
    # of them cost the sender more than the rest of the send.
    return [(len(b), app.send_task(task, args=[b], kwargs=dict(kwargs or {}),
                                   argsrepr=f"[{len(b)} items]")) for b in batches]


def scrub_results(app: Celery, redis_client: redis.Redis, item_ids: set[str]) -> int:
    """Take these ids (an erased user's events) out of every stored task result (a batch's
    report lists its event ids); returns how many results changed."""
    if not item_ids:
        return 0
    prefix = app.conf.result_backend_transport_options["global_keyprefix"]
    changed = 0
    for name in redis_client.scan_iter(match=f"{prefix}celery-task-meta-*", count=1000):
        raw = redis_client.get(name)
        if raw is None:
            continue
        meta = json.loads(raw)
        scrubbed = _without_ids(meta.get("result"), item_ids)
        if scrubbed != meta.get("result"):
            redis_client.set(name, json.dumps({**meta, "result": scrubbed}), keepttl=True)
            changed += 1
    return changed


def _without_ids(value: Any, item_ids: set[str]) -> Any:
    """A batch report with the given ids left out of its lists (``errors`` by their id)."""
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for name, items in value.items():
        if isinstance(items, list):
            items = [item for item in items
                     if not (isinstance(item, str) and item in item_ids)
                     and not (isinstance(item, dict) and item.get("id") in item_ids)]
        out[name] = items
    return out
