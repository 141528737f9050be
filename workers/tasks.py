"""Celery tasks: thin wrappers over plugin.pipeline, one Services per worker process."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from typing import Any

from plugin import pipeline
from plugin.services import Services
from workers.app import app


@lru_cache(maxsize=1)
def services() -> Services:
    # Created lazily inside each worker process (after the fork), never in the parent.
    return Services()


@app.task(name="es_interest.ping")
def ping() -> dict[str, Any]:
    """Proves a worker is alive and can use the model: embeds a word."""
    vector = services().embedder.encode_one("ping")
    return {"pid": os.getpid(), "host": socket.gethostname(), "dims": len(vector)}


@app.task(name="es_interest.index_documents")
def index_documents(docs: list[dict[str, Any]], refresh: bool = False) -> dict[str, Any]:
    return pipeline.index_documents(services(), docs, refresh=refresh).as_dict()


@app.task(name="es_interest.ingest_events")
def ingest_events(events: list[dict[str, Any]], refresh: bool = False) -> dict[str, Any]:
    return pipeline.ingest_events(services(), events, refresh=refresh).as_dict()
