"""The inspector's interest history: snapshots are the rebuild's replay, drift measures them."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from plugin.interest import DocVector, interest_vector, replay
from plugin.profile import drift, snapshots

DAY = 86400.0
TOPICS = {"a": DocVector(np.asarray([1.0, 0.0, 0.0]), ()),
          "b": DocVector(np.asarray([0.0, 1.0, 0.0]), ())}


def _event(n: int, t: float, topic: str, weight: float = 1.0) -> dict[str, Any]:
    """A stored event on the document of one topic."""
    return {"event_id": f"e{n}", "doc_id": topic, "type": "like", "weight": weight,
            "timestamp": int(t * 1000)}


def _switch(n: int) -> list[dict[str, Any]]:
    """n events on one topic, then n on an orthogonal one, a day apart."""
    return [_event(i, i * DAY, "a" if i < n else "b") for i in range(2 * n)]


@pytest.mark.parametrize("points", [1, 2, 5, 60])
def test_snapshots_are_evenly_spread_and_end_with_the_replay(points: int) -> None:
    events = _switch(10)
    taken = snapshots(events, TOPICS, 30 * DAY, 2 * DAY, points)
    assert len(taken) == min(points, 20)
    assert taken[-1].events == 20 and (points == 1 or taken[0].events == 1)
    exact = interest_vector(replay([(e["timestamp"] / 1000, e["weight"],
                                     TOPICS[e["doc_id"]].embedding) for e in events], 3, 30 * DAY))
    assert exact is not None and taken[-1].long is not None
    np.testing.assert_allclose(taken[-1].long, exact, atol=1e-6)


def test_drift_shows_a_switch_of_topic() -> None:
    moved = drift(snapshots(_switch(10), TOPICS, 30 * DAY, 2 * DAY))
    assert moved.long_to_latest[-1] == pytest.approx(1.0)
    assert moved.short_to_latest[-1] == pytest.approx(1.0)
    assert moved.long_step[0] is None and all(s is not None for s in moved.long_step[1:])
    long_sims = [s for s in moved.long_to_latest if s is not None]
    # While the first topic lasts the long vector stays put; after the switch it turns.
    assert long_sims[:10] == pytest.approx([long_sims[0]] * 10)
    assert all(a < b for a, b in itertools.pairwise(long_sims[9:]))
    # The short horizon forgets faster: its first snapshots are further from where it ended.
    short_first = moved.short_to_latest[0]
    assert short_first is not None and short_first < long_sims[0]
    assert len(moved.path) == 20 and all(p is not None for p in moved.path)
    assert 0.0 < moved.explained <= 1.0


def test_no_positive_interest_has_no_vector_and_no_path() -> None:
    events = [_event(0, 0.0, "a", weight=-1.0), _event(1, DAY, "b", weight=-1.0)]
    moved = drift(snapshots(events, TOPICS, 30 * DAY, 2 * DAY))
    assert [s.long for s in moved.snapshots] == [None, None]
    assert moved.path == [None, None] and moved.long_to_latest == [None, None]
    assert drift([]).snapshots == [] and snapshots([], TOPICS, DAY, DAY) == []
