"""Small thread-safe caches kept per process (workers run threads or processes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import cachetools

from plugin.config import Settings

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

    def put_many(self, items: Mapping[K, V]) -> None:
        if self._cache is not None:
            with self._lock:
                self._cache.update(items)

    def discard(self, key: K) -> None:
        if self._cache is not None:
            with self._lock:
                self._cache.pop(key, None)

    def clear(self) -> None:
        if self._cache is not None:
            with self._lock:
                self._cache.clear()


class VersionedCache(LockedCache[K, V]):
    """Values that belong to one version of something kept elsewhere (documents' vectors, of
    the behaviour training that made them): asked under another version it starts over, and a
    value fetched under an older one is not kept, so no process folds an event with the
    vectors of a space its users have left."""

    def __init__(self, cache: cachetools.Cache[K, V] | None) -> None:
        super().__init__(cache)
        self._version: object = None

    def get_many_at(self, version: object, keys: Iterable[K]) -> dict[K, V]:
        if self._cache is None:
            return {}
        with self._lock:
            if version != self._version:
                self._cache.clear()
                self._version = version
            return {k: v for k in keys if (v := self._cache.get(k)) is not None}

    def put_many_at(self, version: object, items: Mapping[K, V]) -> None:
        if self._cache is not None:
            with self._lock:
                if version == self._version:
                    self._cache.update(items)


def lru(maxsize: int) -> LockedCache[K, V]:
    return LockedCache(cachetools.LRUCache(maxsize) if maxsize > 0 else None)


def versioned_ttl(maxsize: int, seconds: float) -> VersionedCache[K, V]:
    return VersionedCache(cachetools.TTLCache(maxsize, seconds)
                          if maxsize > 0 and seconds > 0 else None)


def ttl(maxsize: int, seconds: float) -> LockedCache[K, V]:
    return LockedCache(cachetools.TTLCache(maxsize, seconds)
                       if maxsize > 0 and seconds > 0 else None)


def content_model_key(settings: Settings) -> str:
    """The content model a switch moved the deployment to (absent: the configured one)."""
    return settings.redis_key("content-model")


def user_vectors_key(settings: Settings, user_id: str) -> str:
    """Redis cache of a user's unit vectors for the search layer; workers drop it on change."""
    return settings.redis_key("user", user_id)


# The version (``_seq_no:_primary_term``) a worker process last wrote of a user, so that
# another process sees its own cached copy is stale before it tries a write the engine would
# refuse. A hint only: the engine's version check still decides, so a missing or late hint
# costs a refused write, never a lost update. One hash per time window (one command writes a
# batch's hints, where a key per user took a command each), kept for two windows.
USER_VERSION_WINDOW_S = 300


def _version_keys(settings: Settings) -> tuple[str, str]:
    """This window's hash and the one before it."""
    window = int(time.time() // USER_VERSION_WINDOW_S)
    return (settings.redis_key("user-versions", str(window)),
            settings.redis_key("user-versions", str(window - 1)))


def forget_users(redis: Any, settings: Settings, user_ids: Sequence[str]) -> None:
    """Drop cached vectors and version hints of users whose interests just changed."""
    if user_ids:
        pipe = redis.pipeline(transaction=False)
        pipe.delete(*(user_vectors_key(settings, u) for u in user_ids))
        for key in _version_keys(settings):
            pipe.hdel(key, *user_ids)
        pipe.execute()


def note_user_writes(redis: Any, settings: Settings, changed: Sequence[str],
                     written: Mapping[str, tuple[int, int]]) -> None:
    """After a worker's bulk write of users: drop the cached vectors of those ``changed``,
    and publish the version ``written`` of each user it wrote (one round trip)."""
    if not changed and not written:
        return
    pipe = redis.pipeline(transaction=False)
    if changed:
        pipe.delete(*(user_vectors_key(settings, u) for u in changed))
    if written:
        current, _ = _version_keys(settings)
        pipe.hset(current, mapping={u: "{}:{}".format(*v) for u, v in written.items()})
        pipe.expire(current, 2 * USER_VERSION_WINDOW_S)
    pipe.execute()


def stale_users(redis: Any, settings: Settings,
                cached: Mapping[str, tuple[int, int]]) -> set[str]:
    """Users whose cached version differs from the last one any worker wrote."""
    if not cached:
        return set()
    ids = list(cached)
    pipe = redis.pipeline(transaction=False)
    for key in _version_keys(settings):
        pipe.hmget(key, ids)
    current, previous = pipe.execute()
    return {u for u, now, before in zip(ids, current, previous, strict=True)
            if (hint := now if now is not None else before) is not None
            and hint.decode() != "{}:{}".format(*cached[u])}


def behaviour_version_key(settings: Settings) -> str:
    """The behaviour vectors' current version (a training run): written by `es-interest
    train`, read by search to use only users folded in the same space."""
    return settings.redis_key("behaviour", "version")


def behaviour_coverage_key(settings: Settings) -> str:
    """The current behaviour vectors' target coverage (a share), written by `es-interest
    train` before their version; read by search to weigh the behaviour terms."""
    return settings.redis_key("behaviour", "coverage")
