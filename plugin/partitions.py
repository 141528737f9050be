"""Event partitions: each user's events go to one of N queues, so one consumer owns the user.

A stable hash of the user id picks the partition (the same in every process and on every
machine, unlike Python's ``hash``); senders split batches by partition and Celery routes a
batch by its first event's user (``plugin.celery_app``). A worker started with
``--partitions`` consumes only those queues in one process, keeps its users' states in memory
and never finds them changed by another consumer. Correctness does not rest on this: every
user write is still conditional on the version it read, so a second consumer of a partition
costs refused writes and re-reads, never a lost or doubled event.

N is fixed when the deployment is set up and stored in the interests index's ``_meta``:
changing it moves users between owners while their events are queued, so setup and workers
refuse a configuration that differs (docs/operations.md says how to change it).
"""

from __future__ import annotations

import re
import threading
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from plugin.config import Settings
from plugin.engine import Engine

T = TypeVar("T", bound=Mapping[str, Any])
P = TypeVar("P")
R = TypeVar("R")
META_KEY = "event_partitions"


class PartitionMismatch(RuntimeError):
    """The configured partition count differs from the one the deployment was set up with."""


def partition_of(user_id: object, count: int) -> int:
    """The partition of a user: CRC-32 of its id (as text) modulo ``count``."""
    return zlib.crc32(str(user_id).encode("utf-8")) % count


def event_partition(event: Any, count: int) -> int:
    """An event's user's partition; 0 for one without a user id (its worker rejects it with
    the reason)."""
    user_id = event.get("user_id") if isinstance(event, Mapping) else None
    return 0 if user_id is None else partition_of(user_id, count)


def batch_partition(events: Sequence[Any], count: int) -> int:
    """The partition a batch was routed to: its first event's (the router's rule)."""
    return event_partition(events[0] if events else None, count)


class GroupCommit(Generic[P, R]):
    """Batches of one partition folded together: threads of an owner fold different
    partitions side by side, never two folds of one partition at once (they would race for
    the same users), and the batches that arrive while a partition is being folded wait and
    are folded together next, by whichever of them gets the partition first. A fold's fixed
    cost (engine writes, round trips) is then paid once for all of them. Every batch's task
    returns only once its own fold is done, so its message is acknowledged no sooner than
    alone; a fold that fails fails each batch in it, and each is retried on its own."""

    def __init__(self, fold: Callable[[list[P]], list[R]]) -> None:
        self._fold = fold
        self._guard = threading.Lock()
        self._busy: dict[int, threading.Lock] = {}
        self._waiting: dict[int, list[tuple[P, Future[R]]]] = {}

    def __call__(self, partition: int, payload: P) -> R:
        mine: Future[R] = Future()
        with self._guard:
            busy = self._busy.setdefault(partition, threading.Lock())
            self._waiting.setdefault(partition, []).append((payload, mine))
        with busy:
            if not mine.done():  # nobody folded it while this thread waited: fold all waiting
                with self._guard:
                    taken, self._waiting[partition] = self._waiting[partition], []
                try:
                    results = self._fold([p for p, _ in taken])
                except BaseException as exc:
                    for _, future in taken:
                        future.set_exception(exc)
                else:
                    for (_, future), result in zip(taken, results, strict=True):
                        future.set_result(result)
        return mine.result()


def queue_name(partition: int) -> str:
    return f"events.{partition}"


def all_queues(count: int) -> list[str]:
    return [queue_name(p) for p in range(count)]


def split_by_partition(events: Iterable[T], count: int) -> dict[int, list[T]]:
    """Events grouped by their user's partition, each group in its original order."""
    groups: dict[int, list[T]] = {}
    for event in events:
        groups.setdefault(event_partition(event, count), []).append(event)
    return groups


def parse_spec(spec: str, count: int) -> list[int]:
    """``all``, or partitions and ranges such as ``0-3`` or ``0,2,5-7``, each below ``count``."""
    if spec.strip().lower() == "all":
        return list(range(count))
    chosen: set[int] = set()
    for part in spec.split(","):
        found = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if found is None:
            raise ValueError(f"'{part.strip()}' is not a partition or a range such as 0-3")
        low, high = int(found[1]), int(found[2] or found[1])
        if not 0 <= low <= high < count:
            raise ValueError(f"partitions run from 0 to {count - 1} "
                             f"(ES_INTEREST_EVENT_PARTITIONS={count}); got '{part.strip()}'")
        chosen.update(range(low, high + 1))
    return sorted(chosen)


def stored_count(engine: Engine, settings: Settings) -> int | None:
    """The partition count stored with the interests index (None: not set up yet)."""
    client = engine.client
    if not client.indices.exists_alias(name=settings.interests_alias):
        return None
    mappings = client.indices.get_mapping(index=settings.interests_alias)
    for index in mappings.values():
        value = (index.get("mappings", {}).get("_meta") or {}).get(META_KEY)
        if value is not None:
            return int(value)
    return None


def check_count(engine: Engine, settings: Settings, store: bool = False,
                waiting: Callable[[int], int] | None = None) -> int:
    """The deployment's partition count; raises :class:`PartitionMismatch` when the
    configuration says otherwise. With ``store``, an index that has none gets this one; with
    ``waiting`` (how many batches the old count's queues still hold), a different count is
    stored once those queues are drained."""
    stored = stored_count(engine, settings)
    wanted = settings.event_partitions
    if stored is None or stored == wanted:
        if stored is None and store and engine.client.indices.exists_alias(
                name=settings.interests_alias):
            _store_count(engine, settings, wanted)
        return wanted
    if waiting is None:
        raise PartitionMismatch(
            f"this deployment was set up with {stored} event partitions, and "
            f"ES_INTEREST_EVENT_PARTITIONS is {wanted}: set it to {stored}, or change the "
            "count with `es-interest setup --repartition` (docs/operations.md, Partitions)")
    left = waiting(stored)
    if left:
        raise PartitionMismatch(
            f"{left} batches still wait in the {stored} partition queues (or are being "
            "folded): stop the senders and let the owners drain them first")
    _store_count(engine, settings, wanted)
    return wanted


def _store_count(engine: Engine, settings: Settings, count: int) -> None:
    engine.client.indices.put_mapping(index=settings.interests_alias,
                                      body={"_meta": {META_KEY: count}})
