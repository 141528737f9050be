"""Connections to the engine, Redis and the model, made once per process and only when used."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from plugin import caches
from plugin.caches import LockedCache, VersionedCache, content_model_key
from plugin.config import Settings, load_settings

# How long a process may go on with a version another process changed (behaviour vectors, the
# content model): it reads the current one from Redis at most this often.
VERSION_TTL_S = 10.0

if TYPE_CHECKING:
    import redis
    from celery import Celery

    from plugin.embedding import Embedder
    from plugin.engine import Engine
    from plugin.interest import DocVector, UserInterest


@dataclass(frozen=True)
class ContentModel:
    """The model whose vectors the documents and users carry: the configured one (version
    ""), or the one `es-interest model switch` moved the deployment to (its path and
    version, kept in Redis)."""

    path: str
    version: str = ""


class Services:
    def __init__(self, settings: Settings | None = None, serving: bool = False) -> None:
        """``serving``: a process that answers searches (the API), whose model encodes one
        query at a time between engine requests on the same cores."""
        self.settings = settings or load_settings()
        self.serving = serving
        self._embedders: dict[str, Embedder] = {}
        self._embedder_lock = threading.Lock()
        # The last content model Redis named: what stays while Redis cannot say.
        self._last_content_model: ContentModel | None = None

    @cached_property
    def engine(self) -> Engine:
        from plugin.engine import connect

        return connect(self.settings)

    @property
    def embedder(self) -> Embedder:
        """The content model's embedder (loaded once per model and process)."""
        return self.embedder_for(self.content_model().path)

    def loaded_embedder(self) -> Embedder | None:
        """The content model's embedder where this process loaded it already."""
        return self._embedders.get(self.content_model().path)

    def embedder_for(self, path: str) -> Embedder:
        from plugin.embedding import get_embedder

        with self._embedder_lock:
            if path not in self._embedders:
                s = self.settings
                self._embedders[path] = get_embedder(
                    path, s.model_device, s.embed_batch_size, s.torch_threads, s.model_backend,
                    Path(s.model_cache_dir) if s.model_cache_dir else None,
                    spin=not self.serving)
            return self._embedders[path]

    def content_model(self) -> ContentModel:
        """The deployment's content model, read from Redis at most every VERSION_TTL_S; the
        configured one where no switch happened, or while Redis cannot say."""
        key = content_model_key(self.settings)
        cached = self.content_models.get_many([key])
        if key in cached:
            return cached[key]
        model = ContentModel(self.settings.model)
        try:
            raw = self.redis.get(key)
        except Exception:  # the last model known stays (or the configured one)
            return self._last_content_model or model
        if raw:
            data = json.loads(raw)
            model = ContentModel(str(data["path"]), str(data["version"]))
        self.content_models.put(key, model)
        self._last_content_model = model
        return model

    @cached_property
    def content_models(self) -> LockedCache[str, ContentModel]:
        return caches.ttl(1, VERSION_TTL_S)

    @cached_property
    def user_states(self) -> LockedCache[str, tuple[UserInterest, int, int]]:
        """user_id -> (interest, _seq_no, _primary_term) as this process last wrote it."""
        return caches.lru(self.settings.user_cache_size)

    @cached_property
    def stored_events(self) -> LockedCache[str, bool]:
        """Ids of events this process stored (or found stored): a user's state need not
        remember them to count them once, since a redelivery finds them in the log."""
        return caches.lru(self.settings.user_cache_size)

    @cached_property
    def doc_vectors(self) -> VersionedCache[str, DocVector]:
        """Documents' vectors for folds, of the current behaviour training's version."""
        s = self.settings
        return caches.versioned_ttl(s.doc_vector_cache_size, s.doc_vector_cache_ttl_s)

    @cached_property
    def behaviour_versions(self) -> LockedCache[str, str]:
        """The documents' behaviour-vector version and its coverage, for seconds ("" for
        none); a training in this process clears it at once, other processes' readers within
        the TTL."""
        return caches.ttl(4, VERSION_TTL_S)

    @cached_property
    def celery(self) -> Celery:
        """A client of the workers' queues on this configuration's broker."""
        from plugin.celery_app import make_celery

        return make_celery(self.settings)

    @cached_property
    def redis(self) -> redis.Redis:
        import redis as redis_lib

        # Bounded waits: a Redis that is down or stalled fails a call, never hangs it.
        return redis_lib.Redis.from_url(self.settings.redis_url, socket_connect_timeout=2,
                                        socket_timeout=5)
