"""The offline blend's arithmetic: the linear retriever's min-max and weighted sum, the seen
share, and the target's rank without a sort (the engine agreement: test_evaluation.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from plugin.evaluation import data
from plugin.evaluation.offline_blend import (
    STRATEGIES,
    TERMS,
    LocalVectors,
    OfflineBlend,
    QueryTerms,
    TermStore,
    _key,
    rank_of,
    top_ids,
)
from plugin.interest import DocVector
from plugin.search import BlendWeights, QueryInputs, UserVectors


def _terms(seed: int, documents: int = 40, with_user: bool = True) -> QueryTerms:
    rng = np.random.default_rng(seed)
    present = rng.random((documents, len(TERMS))) < 0.6
    scores = np.where(present, rng.random((documents, len(TERMS))), 0.0).astype(np.float32)
    seen = np.zeros(documents, dtype=bool)
    seen[rng.choice(documents, size=5, replace=False)] = True
    user = UserVectors(long=[1.0, 0.0], behaviour=[0.0, 1.0]) if with_user else UserVectors()
    return QueryTerms(QueryInputs([1.0, 0.0], 0.0, 1), user, [f"d{i}" for i in range(documents)],
                      scores, present, seen)


def test_the_strategies_recomputed_offline_are_the_sums_of_terms() -> None:
    # script_score's Painless script is a weighted sum too: its BM25 and content terms.
    assert set(STRATEGIES) == {"linear_retriever", "knn_linear", "script_score"}


@pytest.mark.parametrize("seed", range(5))
def test_a_targets_rank_is_its_place_in_the_sorted_blend(seed: int) -> None:
    terms = _terms(seed)
    weights = BlendWeights(1.0, query=0.5, popularity=2.0, interest_long=1.0, behaviour=4.0,
                           seen=0.5)
    ranked = top_ids(terms, weights, size=len(terms.ids))
    for place, doc in enumerate(ranked, 1):
        assert rank_of(terms, weights, doc, size=len(terms.ids)) == place
    # Past ``size``, or recalled by no term with a weight: no rank.
    assert rank_of(terms, weights, ranked[-1], size=len(ranked) - 1) is None
    assert rank_of(terms, weights, "not fetched", size=100) is None


def test_a_term_of_weight_zero_recalls_nothing_but_the_words_always_do() -> None:
    terms = _terms(7)
    only_bm25 = BlendWeights(1.0)
    recalled = set(top_ids(terms, only_bm25, size=100))
    assert recalled == {terms.ids[i] for i in np.flatnonzero(terms.present[:, 0])}
    # The words' clause is in every request, whatever its weight.
    words_at_zero = BlendWeights(0.0, popularity=1.0)
    recalled = set(top_ids(terms, words_at_zero, size=100))
    assert recalled == {terms.ids[i] for i in np.flatnonzero(terms.present[:, [0, 2]].any(1))}


def test_seen_matches_get_the_share_of_the_applied_user_terms() -> None:
    terms = _terms(3)
    weights = BlendWeights(1.0, interest_long=1.0, behaviour=3.0, seen=0.5)
    without_share = BlendWeights(1.0, interest_long=1.0, behaviour=3.0)
    seen = int(np.flatnonzero(terms.seen)[0])
    base = float(terms.scores[seen] @ np.array([getattr(without_share, t) for t in TERMS]))
    ranked = top_ids(terms, weights, size=len(terms.ids))
    rank = rank_of(terms, weights, terms.ids[seen], size=len(terms.ids))
    assert rank is not None and ranked[rank - 1] == terms.ids[seen]
    # Its score rose by 0.5 x (1 + 3): everything it passed scores between the two.
    scores = terms.scores.astype(np.float64) @ np.array(
        [getattr(without_share, t) for t in TERMS])
    passed = [i for i in range(len(terms.ids)) if base < scores[i] < base + 2.0]
    assert all(ranked.index(terms.ids[i]) > rank - 1 for i in passed
               if terms.ids[i] in ranked and not terms.seen[i])
    # A user without vectors has no user terms, so no share either.
    no_user = _terms(3, with_user=False)
    assert top_ids(no_user, weights, size=100) == top_ids(no_user, without_share, size=100)


def test_forgetting_a_profile_keeps_the_others_terms_and_a_rename_moves_them() -> None:
    blend = OfflineBlend(window=50, size=100)
    query = data.Query("u1", "m1", "space", 100)
    for profile, seed in (("dynamic", 1), ("candidate", 2), (None, 3)):
        blend.cached[_key("knn_linear", query, profile, ())] = _terms(seed)
    kept = blend.cached[_key("knn_linear", query, "candidate", ())]
    blend.forget({"dynamic", "frozen"})
    assert _key("knn_linear", query, "dynamic", ()) not in blend.cached
    assert _key("knn_linear", query, None, ()) in blend.cached  # without a user: kept
    blend.rename("candidate", "dynamic")
    assert blend.cached[_key("knn_linear", query, "dynamic", ())] is kept
    assert _key("knn_linear", query, "candidate", ()) not in blend.cached
    assert len(blend.cached) == 2


def test_a_term_search_is_kept_by_everything_it_asks() -> None:
    body: dict[str, Any] = {"size": 1000, "knn": {
        "field": "embedding", "query_vector": [0.1, 0.2], "k": 1000,
        "filter": {"bool": {"must_not": [{"ids": {"values": ["m1"]}}]}}}}
    key = TermStore.key("knn_linear", "interest_long", body)
    # The same search asked again (keys in another order): the same key.
    assert TermStore.key("knn_linear", "interest_long", dict(reversed(body.items()))) == key
    other_vector = {**body, "knn": {**body["knn"], "query_vector": [0.1, 0.2000001]}}
    other_held = {**body, "knn": {**body["knn"], "filter": {"bool": {"must_not": [
        {"ids": {"values": ["m1", "m2"]}}]}}}}
    others = {TermStore.key("knn_linear", "interest_long", other_vector),
              TermStore.key("knn_linear", "interest_long", other_held),
              TermStore.key("knn_linear", "interest_short", body),
              TermStore.key("linear_retriever", "interest_long", body)}
    assert key not in others and len(others) == 4



def test_local_vectors_find_the_exact_nearest_in_scope_scored_as_the_engine() -> None:
    rng = np.random.default_rng(2)
    embeddings = rng.normal(size=(50, 6))
    docs = {f"m{i}": DocVector(embeddings[i], (),
                               rng.normal(size=4) if i % 2 == 0 else None)
            for i in range(50)}
    local = LocalVectors.of(docs)
    query = rng.normal(size=6)
    allowed = local.rows(f"m{i}" for i in range(40))  # m40-m49 out of scope
    allowed[local.row["m3"]] = False  # held neutral
    ids, scores = local.knn(local.scope("embedding", allowed), list(query), 5)
    cosine = {d: float(docs[d].embedding @ query  # type: ignore[operator]
                       / np.linalg.norm(docs[d].embedding) / np.linalg.norm(query))
              for d in docs if d != "m3" and int(d[1:]) < 40}
    expected = sorted(cosine, key=lambda d: -cosine[d])[:5]
    assert ids == expected
    assert np.allclose(scores, [(1 + cosine[d]) / 2 for d in expected])
    # Only documents that have the field: half have a behaviour vector.
    ids, _ = local.knn(local.scope("behaviour", allowed), list(rng.normal(size=4)), 100)
    assert len(ids) == 20 and all(int(d[1:]) % 2 == 0 for d in ids)
    ids, scores = local.knn(local.scope("embedding", local.rows([])), list(query), 5)
    assert ids == [] and len(scores) == 0


@pytest.mark.parametrize("seed", range(5))
def test_the_first_documents_are_the_full_sorts_first_ties_in_fetch_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    terms = _terms(seed, documents=300)
    # Coarse scores: many ties, also at the cut.
    terms.scores = np.round(terms.scores * 4) / 4
    weights = BlendWeights(1.0, query=0.5, popularity=1.0, interest_long=1.0, behaviour=2.0,
                           seen=0.5)
    full = top_ids(terms, weights, size=len(terms.ids))
    for size in (0, 1, 7, int(rng.integers(10, 100)), len(full), len(full) + 5):
        assert top_ids(terms, weights, size) == full[:size]
    # Without the user, kept for the last blend asked and asked again.
    no_user = BlendWeights(1.0, query=0.5, popularity=1.0)
    assert terms.plain_top(no_user, 20) == top_ids(terms, no_user, 20)
    assert terms.plain_top(BlendWeights(1.0, popularity=3.0), 20) == top_ids(
        terms, BlendWeights(1.0, popularity=3.0), 20)
