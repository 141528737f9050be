"""Event partitions: a stable owner per user, batches that never mix owners, routing."""

from __future__ import annotations

import zlib

import pytest

from plugin.celery_app import EventPartitionRouter
from plugin.config import load_settings
from plugin.partitions import parse_spec, partition_of, queue_name, split_by_partition


def test_a_user_has_one_partition_everywhere() -> None:
    # CRC-32, not Python's per-process salted hash: another process or machine agrees.
    assert partition_of("user-42", 4) == zlib.crc32(b"user-42") % 4
    assert partition_of(42, 4) == partition_of("42", 4)
    counts = [0] * 4
    for i in range(4000):
        counts[partition_of(f"user-{i}", 4)] += 1
    assert min(counts) > 800  # spread evenly enough to share the work


def test_a_split_never_mixes_partitions_and_keeps_each_users_order() -> None:
    events = [{"event_id": str(i), "user_id": f"u{i % 7}"} for i in range(50)]
    events.append({"event_id": "no-user"})
    groups = split_by_partition(events, 3)
    assert sum(len(g) for g in groups.values()) == len(events)
    for part, group in groups.items():
        with_user = [e for e in group if "user_id" in e]
        assert {partition_of(e["user_id"], 3) for e in with_user} <= {part}
        for user in {e["user_id"] for e in with_user}:
            ids = [int(e["event_id"]) for e in with_user if e["user_id"] == user]
            assert ids == sorted(ids)
    assert {"event_id": "no-user"} in groups[0]  # its worker rejects it with the reason


def test_partition_specs() -> None:
    assert parse_spec("all", 4) == [0, 1, 2, 3]
    assert parse_spec("0-1", 4) == [0, 1]
    assert parse_spec("3, 0-1", 8) == [0, 1, 3]
    for bad in ("4", "2-1", "x", "0-"):
        with pytest.raises(ValueError):
            parse_spec(bad, 4)


def test_a_batch_goes_to_its_users_partition_queue() -> None:
    route = EventPartitionRouter(4)
    batch = [{"user_id": "user-7", "event_id": "e"}]
    assert route("es_interest.ingest_events", [batch], {}, {}) == {
        "queue": queue_name(partition_of("user-7", 4))}
    assert route("es_interest.ingest_events", [[]], {}, {}) == {"queue": "events.0"}
    assert route("es_interest.index_documents", [[{"id": "d"}]], {}, {}) is None


def test_the_partition_count_is_configured_and_checked() -> None:
    assert load_settings({}).event_partitions == 4
    assert load_settings({"ES_INTEREST_EVENT_PARTITIONS": "8"}).event_partitions == 8
    with pytest.raises(Exception, match="at least 1"):
        load_settings({"ES_INTEREST_EVENT_PARTITIONS": "0"})


def test_a_user_forgets_ids_only_of_events_stored_and_settled() -> None:
    """The remembered ids that count an event once shrink to what a redelivery or a racing
    task could still fold: not the ids stored by this process and older than the visibility
    timeout; an id not known stored, or too recent, stays."""
    from dataclasses import replace

    from plugin.interest import UserInterest
    from plugin.pipeline.users import _forget_stored
    from plugin.services import Services

    services = Services(load_settings({}))
    now = 1_000_000.0
    old, fresh = now - services.settings.task_visibility_s - 1, now - 5
    user = replace(UserInterest.empty("u", 4), recent={"stored-old": old, "stored-fresh": fresh,
                                                       "unstored-old": old})
    services.stored_events.put_many({"stored-old": True, "stored-fresh": True})
    kept = _forget_stored(services, user, now)
    assert set(kept.recent) == {"stored-fresh", "unstored-old"}
    assert _forget_stored(services, kept, now) is kept  # nothing more to forget


def test_batches_of_a_partition_that_wait_are_folded_together() -> None:
    import threading

    from plugin.partitions import GroupCommit

    folds: list[list[int]] = []
    first_running, release = threading.Event(), threading.Event()

    def fold(batch: list[int]) -> list[int]:
        folds.append(batch)
        if batch == [1]:
            first_running.set()
            release.wait(5)
        if 13 in batch:
            raise RuntimeError("the engine refused")
        return [x * 10 for x in batch]

    commit: GroupCommit[int, int] = GroupCommit(fold)
    results: dict[int, object] = {}

    def run(partition: int, x: int) -> None:
        try:
            results[x] = commit(partition, x)
        except RuntimeError as exc:
            results[x] = str(exc)

    leader = threading.Thread(target=run, args=(0, 1))
    leader.start()
    first_running.wait(5)
    others = [threading.Thread(target=run, args=(0, x)) for x in (2, 3)]
    other_partition = threading.Thread(target=run, args=(1, 7))
    for t in [*others, other_partition]:
        t.start()
    other_partition.join(5)
    assert results[7] == 70  # another partition never waits for this one
    release.set()
    for t in [leader, *others]:
        t.join(5)
    assert results == {1: 10, 2: 20, 3: 30, 7: 70}
    assert sorted(map(sorted, folds)) == [[1], [2, 3], [7]]  # 2 and 3 waited: one fold
    run(0, 13)  # a failed fold fails its batches, each with the error
    assert results[13] == "the engine refused"
