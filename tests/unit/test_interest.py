"""The interest math: exact decayed sums, whatever the arrival order."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest

from plugin.interest import (
    Contribution,
    DocVector,
    HorizonState,
    UserInterest,
    decay_factor,
    fold,
    fold_events,
    interest_vector,
    replay,
)

DAY = 86400.0


def unit(*xs: float) -> np.ndarray:
    v = np.asarray(xs, dtype=np.float64)
    return v / np.linalg.norm(v)


EVENTS = [
    (1000.0, 2.0, unit(1, 0, 0)),
    (1000.0 + DAY, 1.0, unit(0, 1, 0)),
    (1000.0 + 3 * DAY, -0.5, unit(1, 1, 0)),
    (1000.0 + 0.5 * DAY, 4.0, unit(0, 0, 1)),
]


def test_decay_halves_per_half_life() -> None:
    assert decay_factor(DAY, DAY) == pytest.approx(0.5)
    assert decay_factor(0.0, DAY) == 1.0


def test_every_arrival_order_equals_the_time_ordered_replay() -> None:
    expected = replay(EVENTS, 3, DAY)
    for order in itertools.permutations(EVENTS):
        state = HorizonState.empty(3)
        for t, w, emb in order:
            state = fold(state, timestamp=t, weight=w, embedding=emb, half_life_s=DAY)
        np.testing.assert_allclose(state.vector_sum, expected.vector_sum, atol=1e-12)
        assert state.weight == pytest.approx(expected.weight)
        assert state.net == pytest.approx(expected.net)
        assert state.ref_time == expected.ref_time == 1000.0 + 3 * DAY


def test_replay_matches_the_closed_form() -> None:
    state = replay(EVENTS, 3, DAY)
    t_ref = max(t for t, _, _ in EVENTS)
    s = sum(w * 2 ** (-(t_ref - t) / DAY) * e for t, w, e in EVENTS)
    big_w = sum(abs(w) * 2 ** (-(t_ref - t) / DAY) for t, w, _ in EVENTS)
    np.testing.assert_allclose(state.vector_sum, s, atol=1e-12)
    assert state.weight == pytest.approx(big_w)


def test_negative_feedback_pushes_away_but_never_flips() -> None:
    liked = fold(HorizonState.empty(2), timestamp=0, weight=2.0, embedding=unit(1, 0),
                 half_life_s=DAY)
    pushed = fold(liked, timestamp=1, weight=-1.0, embedding=unit(1, 1), half_life_s=DAY)
    v = interest_vector(pushed)
    assert v is not None and v[1] < 0 < v[0]  # moved away from (1, 1), still towards (1, 0)
    only_negative = fold(HorizonState.empty(2), timestamp=0, weight=-2.0,
                         embedding=unit(1, 0), half_life_s=DAY)
    assert interest_vector(only_negative) is None


def test_a_user_who_dislikes_more_than_likes_still_has_a_direction() -> None:
    # Net evidence negative (a harsh rater), positive evidence present: the direction is the
    # likes less the dislikes, not absent.
    liked = fold(HorizonState.empty(2), timestamp=0, weight=1.0, embedding=unit(1, 0),
                 half_life_s=DAY)
    state = fold(liked, timestamp=1, weight=-2.5, embedding=unit(0, 1), half_life_s=DAY)
    assert state.net < 0
    v = interest_vector(state)
    assert v is not None and v[1] < 0 < v[0]


def test_cancelled_evidence_is_absent_and_vectors_are_unit() -> None:
    state = fold(HorizonState.empty(2), timestamp=0, weight=1.0, embedding=unit(1, 0),
                 half_life_s=DAY)
    state = fold(state, timestamp=0, weight=-1.0, embedding=unit(1, 0), half_life_s=DAY)
    assert interest_vector(state) is None
    v = interest_vector(replay(EVENTS, 3, DAY))
    assert v is not None and np.linalg.norm(v) == pytest.approx(1.0, abs=1e-6)
    assert interest_vector(HorizonState.empty(3)) is None


def test_non_finite_input_is_refused() -> None:
    with pytest.raises(ValueError):
        fold(HorizonState.empty(2), timestamp=0, weight=1.0, embedding=[math.nan, 0],
             half_life_s=DAY)


def test_user_interest_round_trips_through_its_source() -> None:
    user = UserInterest.empty("u1", 3)
    for t, w, e in EVENTS:
        user = user.fold(Contribution(t, w, e, "like", ("tag-a",)), 30 * DAY, DAY)
    source = user.to_source(updated_at=2000.0)
    again = UserInterest.from_source(source)
    np.testing.assert_allclose(again.long.vector_sum, user.long.vector_sum)
    assert again.event_counts == {"like": 4}
    assert source["top_tags"] == ["tag-a"]
    assert source["vectors"] == ["long", "short"]
    assert "interest_long" not in source  # derived from the state, never stored
    assert again.content_version == ""  # the configured model
    switched = UserInterest.from_source(replace(user, content_version="m2").to_source(2000.0))
    assert switched.content_version == "m2"  # the model its content sums come from
    folded = switched.fold(Contribution(3000.0, 1.0, unit(1, 0, 0), "like"), 30 * DAY, DAY)
    assert folded.content_version == "m2"


def test_behaviour_folds_at_both_horizons_in_one_training_runs_space() -> None:
    """The behaviour vectors give a long-term and a short-term (recent) vector, each the exact
    replay at its half-life, and round-trip through the stored source; a vector of another
    training run is never mixed in."""
    user = UserInterest.empty("u1", 3)
    for t, w, e in reversed(EVENTS):  # any arrival order
        user = user.fold(Contribution(t, w, e, "like", behaviour=e[:2] + 1.0,
                                      behaviour_version="v1"), 30 * DAY, DAY)
    for state, half_life in ((user.behaviour, 30 * DAY), (user.behaviour_short, DAY)):
        exact = replay([(t, w, e[:2] + 1.0) for t, w, e in EVENTS], 2, half_life)
        assert state is not None
        np.testing.assert_allclose(state.vector_sum, exact.vector_sum)
    short = interest_vector(user.behaviour_short)  # type: ignore[arg-type]
    long = interest_vector(user.behaviour)  # type: ignore[arg-type]
    assert short is not None and long is not None and not np.allclose(short, long)
    other = user.fold(Contribution(9e9, 1.0, EVENTS[0][2], "like", behaviour=np.ones(2),
                                   behaviour_version="v2"), 30 * DAY, DAY)
    assert other.behaviour_short is user.behaviour_short  # another run's space: left out
    source = user.to_source(updated_at=2000.0)
    assert source["vectors"] == ["long", "short", "behaviour", "behaviour_short"]
    again = UserInterest.from_source(source)
    assert again.behaviour_short is not None
    np.testing.assert_allclose(again.behaviour_short.vector_sum, user.behaviour_short.vector_sum)


def _stored(n: int, t: float, w: float) -> dict[str, object]:
    """EVENTS[n] as the events index stores it (on document d<n>)."""
    return {"event_id": f"event-{n}", "doc_id": f"d{n}", "type": "like", "weight": w,
            "timestamp": int(t * 1000)}


DOCS = {f"d{n}": DocVector(e, (f"tag-{n}",)) for n, (_, _, e) in enumerate(EVENTS)}


def test_fold_events_counts_each_event_once_and_matches_the_replay() -> None:
    stored = [_stored(n, t, w) for n, (t, w, _) in enumerate(EVENTS)]
    user, applied = fold_events(None, "u1", stored[:3] + stored[:1], DOCS, 30 * DAY, DAY, 5000.0)
    assert applied == ["event-0", "event-1", "event-2"]  # the repeat within the batch is skipped
    again, applied = fold_events(user, "u1", stored, DOCS, 30 * DAY, DAY, 5100.0)
    assert applied == ["event-3"] and again is not None  # a redelivered batch: only the new one
    exact = replay([(t, w, e) for t, w, e in EVENTS], 3, 30 * DAY)
    np.testing.assert_allclose(again.long.vector_sum, exact.vector_sum)
    assert again.event_counts == {"like": 4}
    # Ids are remembered for RECENT_WINDOW_S after they were applied, then forgotten.
    assert set(again.recent) == {f"event-{n}" for n in range(4)}
    fifth = {**stored[0], "event_id": "event-4"}
    later, applied = fold_events(again, "u1", [fifth], DOCS, 30 * DAY, DAY, 5000.0 + 7200)
    assert applied == ["event-4"] and later is not None and set(later.recent) == {"event-4"}
    assert fold_events(None, "u1", [], DOCS, 30 * DAY, DAY, 0.0) == (None, [])


def test_event_ids_and_tags_are_stored_as_values_not_keys() -> None:
    folded, _ = fold_events(None, "u1", [_stored(n, t, w) for n, (t, w, _) in enumerate(EVENTS)],
                            DOCS, 30 * DAY, DAY, now=5000.0)
    assert folded is not None
    user = folded
    state = user.to_source(updated_at=5000.0)["state"]
    # The engine's JSON parser interns object keys: an unbounded set of them (an id per
    # event) cost a quarter of its CPU, so ids and tags are values, in two lists.
    assert state["recent"] == {"keys": [f"event-{n}" for n in range(4)], "values": [5000.0] * 4}
    assert state["tag_scores"]["keys"] == [f"tag-{n}" for n in range(4)]
    again = UserInterest.from_source(user.to_source(updated_at=5000.0))
    assert again.recent == user.recent and again.tag_scores == user.tag_scores
    # Documents written before kept objects, or [key, value] pairs; they still read the same.
    for recent, tags in ((dict(user.recent), dict(user.tag_scores)),
                         ([list(p) for p in user.recent.items()],
                          [list(p) for p in user.tag_scores.items()])):
        old = user.to_source(updated_at=5000.0)
        old["state"].update(recent=recent, tag_scores=tags)
        assert UserInterest.from_source(old).recent == user.recent
        assert UserInterest.from_source(old).tag_scores == user.tag_scores


def test_seen_keeps_the_latest_positive_documents_in_any_arrival_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import plugin.interest as interest

    monkeypatch.setattr(interest, "SEEN_KEPT", 2)
    stored = [_stored(n, t, w) for n, (t, w, _) in enumerate(EVENTS)]
    folded = []
    for order in itertools.permutations(stored):
        user = None
        for event in order:  # one event per call, as separate deliveries would be
            user, _ = fold_events(user, "u1", [event], DOCS, 30 * DAY, DAY, 5000.0)
        assert user is not None
        folded.append(user.seen_ids())
    # d2 was disliked (not seen); of d0, d1 and d3, the two latest positive ones are kept.
    assert folded == [["d1", "d3"]] * len(folded)
    assert UserInterest.from_source(user.to_source(5000.0)).seen == user.seen
