"""Validation of events: each bad field gets its own clear reason."""

from __future__ import annotations

import pytest

from plugin.config import DEFAULT_EVENT_WEIGHTS
from plugin.events import InvalidEvent, known_fields, parse_event, positive_sequences_of

NOW = 1_700_000_000.0
GOOD = {"event_id": "e1", "user_id": "u1", "doc_id": "d1", "type": "like", "timestamp": NOW}


def parse(**changes: object):  # type: ignore[no-untyped-def]
    raw = {**GOOD, **changes}
    return parse_event({k: v for k, v in raw.items() if v is not ...}, DEFAULT_EVENT_WEIGHTS,
                       now=NOW)


def test_a_good_event_gets_its_types_weight() -> None:
    event = parse()
    assert (event.event_id, event.user_id, event.weight, event.timestamp) == ("e1", "u1", 2.0, NOW)


@pytest.mark.parametrize(("changes", "reason"), [
    ({"user_id": ...}, "missing 'user_id'"),
    ({"type": "teleport"}, "unknown event type 'teleport'"),
    ({"weight": "heavy"}, "'weight' must be a number"),
    ({"weight": float("nan")}, "'weight' must be finite"),
    ({"timestamp": NOW + 3600}, "in the future"),
    ({"timestamp": "yesterday"}, "neither epoch seconds nor ISO 8601"),
    ({"doc_id": ...}, "needs a 'doc_id' or a 'text'"),
    ({"dwell_s": -1}, "'dwell_s' must be 0..86400 seconds"),
    ({"dwell_s": 1e12}, "'dwell_s' must be 0..86400 seconds"),
    # What the engine cannot store is refused here, per item, not in the worker's batch.
    ({"weight": 3.5e38}, "'weight' 3.5e\\+38 is out of range"),
    ({"weight": -1e308}, "out of range"),
    ({"user_id": "u" * 513}, "'user_id' is 513 bytes of UTF-8; at most 512"),
    ({"user_id": "é" * 257}, "'user_id' is 514 bytes"),
    ({"event_id": "e" * 600}, "'event_id' is 600 bytes"),
    ({"doc_id": "d" * 513}, "'doc_id' is 513 bytes"),
    ({"user_id": "u\ud800"}, "'user_id' is not valid Unicode"),
    ({"text": "bad \ud800 text"}, "'text' is not valid Unicode"),
])
def test_bad_fields_are_named(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        parse(**changes)


def test_iso_timestamps_dwell_and_text() -> None:
    event = parse(timestamp="2023-11-14T22:13:20Z", type="view", dwell_s=60, doc_id=...,
                  text="space opera")
    assert event.timestamp == NOW
    assert event.weight == pytest.approx(0.2 * 2)
    assert event.doc_id is None and event.text == "space opera"


def test_an_event_without_id_gets_a_stable_one() -> None:
    first = parse(event_id=...)
    again = parse(event_id=...)
    assert first.event_id == again.event_id and first.event_id.startswith("auto-")


def test_unknown_fields_never_reach_the_queue() -> None:
    raw = {**GOOD, "blob": "x" * 1000, "nested": {"a": 1}}
    assert known_fields(raw) == GOOD


def test_positive_sequences_sum_each_documents_events_in_first_time_order() -> None:
    def e(user: str, doc: str, weight: float, ts: int) -> dict[str, object]:
        return {"user_id": user, "doc_id": doc, "weight": weight, "timestamp": ts}

    sequences = positive_sequences_of([
        e("u1", "b", 1.0, 20), e("u1", "a", 2.0, 10), e("u1", "c", 1.0, 5),
        e("u1", "c", -1.5, 30),  # liked, then disliked more: out
        e("u2", "a", 1.0, 40), e("u1", "b", 1.0, 1),  # b's first time is 1
    ])
    assert sequences == {"u1": ["b", "a"], "u2": ["a"]}
