"""The Celery app, configured explicitly: Redis broker and backend, JSON only, late acks."""

from __future__ import annotations

from celery import Celery

from plugin.config import Settings, load_settings


def make_celery(settings: Settings) -> Celery:
    celery = Celery("es_interest", broker=settings.redis_url, backend=settings.redis_url,
                    include=["workers.tasks"])
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
        },
        worker_hijack_root_logger=False,
        # Embedding documents is CPU-bound, folding events is I/O-bound: separate queues let
        # each get the pool that suits it (README, Workers). Other tasks use the default queue.
        # `es-interest worker --beat` runs these: behaviour vectors retrained from the event
        # log, and a popularity flush now and then (workers schedule one after each change).
        beat_schedule={
            "train-behaviour": {"task": "es_interest.train_behaviour",
                                "schedule": settings.behaviour_train_interval_s},
            "flush-popularity": {"task": "es_interest.flush_popularity", "schedule": 60.0},
        },
        task_routes={
            "es_interest.index_documents": {"queue": "documents"},
            "es_interest.ingest_events": {"queue": "events"},
        },
    )
    return celery


app = make_celery(load_settings())
