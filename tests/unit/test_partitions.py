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
