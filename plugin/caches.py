"""Small thread-safe caches kept per process (workers run threads or processes)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any, Generic, TypeVar

import cachetools

K = TypeVar("K")
V = TypeVar("V")


class LockedCache(Generic[K, V]):
    """A cachetools cache behind a lock; ``maxsize`` 0 turns it off."""

    def __init__(self, cache: cachetools.Cache[K, V] | None) -> None:
        self._cache = cache
        self._lock = threading.Lock()

    def get_many(self, keys: Iterable[K]) -> dict[K, V]:
        if self._cache is None:
            return {}
        with self._lock:
            return {k: v for k in keys if (v := self._cache.get(k)) is not None}

    def put(self, key: K, value: V) -> None:
        if self._cache is not None:
            with self._lock:
                self._cache[key] = value

    def discard(self, key: K) -> None:
        if self._cache is not None:
            with self._lock:
                self._cache.pop(key, None)

    def clear(self) -> None:
        if self._cache is not None:
            with self._lock:
                self._cache.clear()


def lru(maxsize: int) -> LockedCache[K, V]:
    return LockedCache(cachetools.LRUCache(maxsize) if maxsize > 0 else None)


def ttl(maxsize: int, seconds: float) -> LockedCache[K, V]:
    return LockedCache(cachetools.TTLCache(maxsize, seconds)
                       if maxsize > 0 and seconds > 0 else None)


# Redis cache of users' unit vectors for the search layer; workers drop entries on change.
USER_VECTORS_PREFIX = "es-interest:user:"


def forget_users(redis: Any, user_ids: Sequence[str]) -> None:
    """Drop cached vectors of users whose interests just changed."""
    if user_ids:
        redis.delete(*(USER_VECTORS_PREFIX + u for u in user_ids))


# The behaviour vectors' current version (a training run), per index prefix: written by
# `es-interest train`, read by search to use only users folded in the same space.
BEHAVIOUR_VERSION_KEY = "es-interest:behaviour-version:"
