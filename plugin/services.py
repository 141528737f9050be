"""Connections to the engine, Redis and the model, made once per process and only when used."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from plugin import caches
from plugin.caches import LockedCache
from plugin.config import Settings, load_settings

BEHAVIOUR_VERSION_TTL_S = 10.0

if TYPE_CHECKING:
    import redis
    from celery import Celery

    from plugin.embedding import Embedder
    from plugin.engine import Engine
    from plugin.interest import DocVector, UserInterest


class Services:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()

    @cached_property
    def engine(self) -> Engine:
        from plugin.engine import connect

        return connect(self.settings)

    @cached_property
    def embedder(self) -> Embedder:
        from plugin.embedding import get_embedder

        s = self.settings
        return get_embedder(s.model, s.model_device, s.embed_batch_size, s.torch_threads,
                            s.model_backend, Path(s.model_cache_dir) if s.model_cache_dir else None)

    @cached_property
    def user_states(self) -> LockedCache[str, tuple[UserInterest, int, int]]:
        """user_id -> (interest, _seq_no, _primary_term) as this process last wrote it."""
        return caches.lru(self.settings.user_cache_size)

    @cached_property
    def doc_vectors(self) -> LockedCache[str, DocVector]:
        s = self.settings
        return caches.ttl(s.doc_vector_cache_size, s.doc_vector_cache_ttl_s)

    @cached_property
    def behaviour_versions(self) -> LockedCache[str, str]:
        """The documents' behaviour-vector version, for seconds ("" for none); a training
        in this process clears it at once, other processes' readers within the TTL."""
        return caches.ttl(4, BEHAVIOUR_VERSION_TTL_S)

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
