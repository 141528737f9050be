"""MovieLens ratings as the events a deployment collects (the demo and the evaluation)."""

from __future__ import annotations

import pytest

from plugin.config import DEFAULT_EVENT_WEIGHTS
from plugin.events import parse_event
from plugin.movielens import Rating, rating_event


@pytest.mark.parametrize(("stars", "kind", "weight"), [
    (5.0, "like", 2.0), (4.0, "like", 1.0), (3.5, None, None), (3.0, None, None),
    (2.0, "dislike", -1.0), (0.5, "dislike", -2.5)])
def test_a_rating_becomes_a_weighted_like_or_dislike_or_nothing(
        stars: float, kind: str | None, weight: float | None) -> None:
    event = rating_event(Rating("7", "42", stars, 964_982_703))
    if kind is None:
        assert event is None
        return
    assert event is not None
    assert (event["event_id"], event["type"], event["weight"]) == ("r-7-42", kind, weight)
    parsed = parse_event(event, DEFAULT_EVENT_WEIGHTS, now=1_800_000_000.0)
    assert (parsed.user_id, parsed.doc_id, parsed.weight) == ("7", "42", weight)
