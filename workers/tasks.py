"""Celery tasks: thin, idempotent wrappers over plugin.pipeline, one Services per process.

Transient engine or Redis errors (and a user document that kept changing) are retried with
exponential backoff; a task that still fails goes to the dead-letter list.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from typing import Any

import redis

from plugin import pipeline
from plugin.engine import transient_errors
from plugin.services import Services
from workers.app import app
from workers.dead_letter import DeadLetterTask

TRANSIENT: tuple[type[BaseException], ...] = (
    *transient_errors(),
    redis.ConnectionError,
    redis.TimeoutError,
    pipeline.ConcurrentUpdateError,
)
RETRY = {
    "base": DeadLetterTask,
    "autoretry_for": TRANSIENT,
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 6,
}


@lru_cache(maxsize=1)
def services() -> Services:
    # Created lazily inside each worker process (after the fork), never in the parent.
    return Services()


@app.task(name="es_interest.ping")
def ping() -> dict[str, Any]:
    """Proves a worker is alive and can use the model: embeds a word."""
    vector = services().embedder.encode_one("ping")
    return {"pid": os.getpid(), "host": socket.gethostname(), "dims": len(vector)}


@app.task(name="es_interest.index_documents", **RETRY)
def index_documents(docs: list[dict[str, Any]], refresh: bool = False) -> dict[str, Any]:
    report = pipeline.index_documents(services(), docs, refresh=refresh)
    return {**report.as_dict(), "worker_pid": os.getpid()}


@app.task(name="es_interest.ingest_events", **RETRY)
def ingest_events(events: list[dict[str, Any]], refresh: bool = False) -> dict[str, Any]:
    report = pipeline.ingest_events(services(), events, refresh=refresh)
    return {**report.as_dict(), "worker_pid": os.getpid()}


@app.task(name="es_interest.rebuild_user", **RETRY)
def rebuild_user(user_id: str) -> dict[str, Any]:
    return pipeline.rebuild_user(services(), user_id)
