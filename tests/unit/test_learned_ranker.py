"""The evaluation's learned ranker: its windows, what it learns, and the seen documents'
places (pure functions, no services)."""

from __future__ import annotations

import numpy as np

from plugin.config import BLEND_TERMS
from plugin.evaluation import data
from plugin.evaluation.learned_ranker import (
    FEATURES,
    Window,
    cross_validated,
    fit,
    fold_of,
    linear,
    reranked,
    window,
)
from plugin.evaluation.offline_blend import QueryTerms
from plugin.search import BlendWeights, QueryInputs, UserVectors

TERM = {t: n for n, t in enumerate(BLEND_TERMS)}


def _terms(scores: np.ndarray, seen: list[bool], user: UserVectors) -> QueryTerms:
    n = len(scores)
    return QueryTerms(QueryInputs([0.0], 1.0, 1), user, [f"d{i}" for i in range(n)],
                      scores.astype(np.float32), np.ones_like(scores, dtype=bool),
                      np.array(seen, dtype=bool))


def test_a_window_is_the_blends_order_with_unsent_terms_at_zero() -> None:
    scores = np.zeros((4, len(BLEND_TERMS)))
    scores[:, TERM["bm25"]] = [0.1, 0.9, 0.5, 0.3]
    scores[:, TERM["interest_short"]] = [1.0, 1.0, 1.0, 1.0]
    user = UserVectors(long=[1.0], seen=("d3",))
    terms = _terms(scores, [False, False, False, True], user)
    plan = BlendWeights(bm25=1.0, interest_short=0.0)  # interest_short is not in the request
    w = window(terms, plan, data.Query("u", "d2", "x", 0, "term"), words=2)
    # d1 (0.9), d2 (0.5), d3 (0.3), d0 (0.1): the target d2 is second.
    assert w.target == 1 and linear(w) == 2
    assert np.allclose(w.features[:, FEATURES.index("bm25")], [0.9, 0.5, 0.3, 0.1])
    assert not w.features[:, FEATURES.index("interest_short")].any()
    assert w.features[:, FEATURES.index("place")].tolist() == [0, 1, 2, 3]
    assert (w.features[:, FEATURES.index("words")] == 2).all()
    assert (w.features[:, FEATURES.index("seen_count")] == 1).all()
    assert w.seen.tolist() == [False, False, True, False]
    missing = window(terms, plan, data.Query("u", "nowhere", "x", 0, "term"), words=1)
    assert missing.target is None and linear(missing) is None


def _toy(rng: np.random.Generator, user: str, seen_first: bool = False) -> Window:
    """Ten documents in blend order; the target, at a random place, is the one whose
    behaviour term is highest; the first document is held neutral where asked."""
    n = 10
    rows = np.zeros((n, len(FEATURES) + 1))
    rows[:, FEATURES.index("behaviour")] = rng.uniform(0.0, 0.5, n)
    rows[:, FEATURES.index("place")] = np.arange(n)
    target = int(rng.integers(1, n))
    rows[target, FEATURES.index("behaviour")] = 0.9
    if seen_first:
        rows[0, -1] = 1.0
    return Window(rows, target, "term", user)


def test_the_ranker_learns_a_term_and_leaves_seen_documents_in_place() -> None:
    rng = np.random.default_rng(0)
    train = [_toy(rng, f"u{i % 40}") for i in range(400)]
    model = fit(train)
    held_out = [_toy(rng, "other", seen_first=True) for _ in range(50)]
    # The held-neutral first place stays; the target takes the first new place.
    assert [reranked(model, w) for w in held_out] == [2] * 50
    assert sum(linear(w) == 2 for w in held_out) < 50
    # A seen target keeps its own place, whatever the ranker thinks.
    seen_target = _toy(rng, "other")
    seen_target.rows[seen_target.target, -1] = 1.0
    assert reranked(model, seen_target) == seen_target.target + 1


def test_cross_validation_keeps_each_user_in_one_fold() -> None:
    rng = np.random.default_rng(1)
    windows = [_toy(rng, f"u{i % 30}") for i in range(300)]
    assert {fold_of("u7") for _ in range(3)} == {fold_of("u7")}
    ranks = cross_validated(windows)
    assert len(ranks) == len(windows)
    assert sum(r == 1 for r in ranks) > 0.9 * len(windows)
