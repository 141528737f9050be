"""The evaluation's pure parts: profiles at query time, the controls, the comparator."""

from __future__ import annotations

import numpy as np
import pytest

from plugin.evaluation import data
from plugin.evaluation.run import (
    DAY,
    ITEM_PRIOR,
    OTHER_USER,
    Corpus,
    _controls,
    _stored,
    best_arms,
    frozen_profiles,
    objective,
    overtake_share,
    query_time_profiles,
    shortfall,
    stable_choice,
    stable_order,
    time_buckets,
)
from plugin.interest import DocVector, fold_events
from plugin.search import vectors_of
from plugin.strategies import UserVectors

DOCS = {f"m{i}": DocVector(np.eye(4)[i].tolist(), ()) for i in range(4)}


def _like(user: str, doc: str, t: int) -> dict[str, object]:
    return {"event_id": f"{user}-{doc}", "user_id": user, "doc_id": doc, "type": "like",
            "weight": 1.0, "timestamp": t}


def _corpus(history: dict[str, list[dict[str, object]]]) -> Corpus:
    split = data.Split([], [], [], {}, history)  # type: ignore[arg-type]
    return Corpus(split, [], [], DOCS, {}, [])


def test_a_profile_at_query_time_holds_exactly_the_events_before_it() -> None:
    history = {"u": [_like("u", "m0", 100), _like("u", "m1", 200), _like("u", "m2", 300)]}
    queries = [data.Query("u", "m3", "q", t) for t in (50, 200, 301)]
    profile = query_time_profiles(_corpus(history), DOCS, (365.0, 7.0), queries)
    assert profile(queries[0]).empty  # nothing before it
    for query, before in ((queries[1], 1), (queries[2], 3)):
        # Strictly before: the like at the query's own second is not in its profile.
        state, _ = fold_events(None, "u", [_stored(e, {}) for e in history["u"][:before]],
                               DOCS, 365 * DAY, 7 * DAY, 0.0)
        assert state is not None
        expected = vectors_of(state)
        got = profile(query)
        assert got.seen == expected.seen == tuple(f"m{i}" for i in reversed(range(before)))
        np.testing.assert_allclose(got.long or [], expected.long or [])


def test_a_frozen_profile_holds_the_training_events_at_every_later_query() -> None:
    history = {"u": [_like("u", "m0", 100), _like("u", "m1", 200), _like("u", "m2", 300)]}
    split = data.Split([], [], [], {"u": history["u"][:2]}, history)  # type: ignore[arg-type]
    corpus = Corpus(split, [], [], DOCS, {}, [])
    frozen = frozen_profiles(corpus, DOCS, (365.0, 7.0))
    # As the query-time profile stood right after the training cut (the second like)...
    at_cut = query_time_profiles(corpus, DOCS, (365.0, 7.0), [data.Query("u", "m3", "q", 201)])
    expected = at_cut(data.Query("u", "m3", "q", 201))
    for t in (201, 301, 10_000):
        got = frozen(data.Query("u", "m3", "q", t))
        # ...and the same later: the third like, after the cut, never enters it.
        assert got.seen == expected.seen == ("m1", "m0")
        np.testing.assert_allclose(got.long or [], expected.long or [])
    assert frozen(data.Query("nobody", "m3", "q", 1)).empty


def test_the_controls_use_no_vector_of_the_user_but_keep_their_seen_documents() -> None:
    own = {"a": UserVectors([1.0, 0.0], None, seen=("m0",)),
           "b": UserVectors([0.0, 1.0], None, seen=("m1",)),
           "c": UserVectors([0.6, 0.8], None, seen=("m2",))}
    queries = [data.Query(u, "m3", "q", 1) for u in own]

    def dynamic(q: data.Query) -> UserVectors:
        return own[q.user_id]

    controls = _controls(dynamic, queries)
    mean = np.mean([v.long for v in own.values()], axis=0)
    for q in queries:
        prior, other = controls[ITEM_PRIOR](q), controls[OTHER_USER](q)
        np.testing.assert_allclose(prior.long or [], mean / np.linalg.norm(mean))
        assert other.long in [v.long for u, v in own.items() if u != q.user_id]
        assert prior.seen == other.seen == own[q.user_id].seen


def test_the_comparator_is_the_best_non_personalized_arm_of_each_protocol() -> None:
    validation = {
        "term": {"BM25": 0.10, "BM25 + popularity (linear_retriever)": 0.17,
                 "non-personalized default (linear_retriever)": 0.16,
                 "non-personalized default (knn_linear)": 0.20},
        "refind": {"BM25": 0.30, "BM25 + popularity (knn_linear)": 0.25},
    }
    # Another strategy's plain ranking wins term queries: that is the comparator there.
    assert best_arms(validation) == {"term": "non-personalized default (knn_linear)",
                                     "refind": "BM25"}


def test_time_buckets_cut_the_queries_in_time_order_into_even_parts() -> None:
    queries = [data.Query(f"u{t % 3}", "m0", "q", t) for t in (50, 10, 40, 30, 20, 60, 70)]
    buckets = time_buckets(queries, 3)
    assert [[q.timestamp for q in b] for b in buckets] == [[10, 20, 30], [40, 50], [60, 70]]
    # Each bucket's cut (its first query) is at or before every query in it.
    assert all(b[0].timestamp <= min(q.timestamp for q in b) for b in buckets)
    assert time_buckets(queries[:2], 4) == [[queries[1]], [queries[0]]]



def test_the_objective_charges_a_blend_for_harm_on_any_protocol() -> None:
    queries = [data.Query("u", "m0", "q", 0, protocol) for protocol in
               ("term", "term", "words", "words", "refind", "refind")]
    floors = {"term": 0.2, "words": 0.3, "refind": 0.3}
    # No protocol below its floor: the discovery queries' mean.
    at_floors = np.array([0.2, 0.4, 0.3, 0.3, 0.3, 0.5])
    assert objective(at_floors, queries, floors, margin_se=0) == pytest.approx(0.3)
    # A term gain bought with a words loss of the same size scores lower than neither.
    traded = np.array([0.3, 0.4, 0.2, 0.3, 0.3, 0.5])
    assert objective(traded, queries, floors) < objective(at_floors, queries, floors)
    # A re-finding loss costs its shortfall although those queries are not in the mean.
    refind_loss = np.array([0.2, 0.4, 0.3, 0.3, 0.1, 0.3])
    assert objective(refind_loss, queries, floors, margin_se=0) == pytest.approx(0.3 - 0.1)
    # Without floors, the plain mean over every query.
    assert objective(at_floors, queries) == pytest.approx(at_floors.mean())


def test_a_floor_counts_as_met_only_a_standard_error_above_it() -> None:
    queries = [data.Query("u", "m0", "q", 0, protocol) for protocol in
               ("term", "term", "refind", "refind")]
    floors = {"term": 0.0, "refind": 0.3}
    # Re-finding's mean 0.35 is above its floor, but its standard error is 0.05 x 1: charged
    # 0.35 - 0.3 - 0.1 = -0.05 at 2 errors, nothing at 1.
    ndcg = np.array([0.2, 0.2, 0.3, 0.4])
    assert objective(ndcg, queries, floors, margin_se=1.0) == pytest.approx(0.2)
    assert objective(ndcg, queries, floors, margin_se=2.0) == pytest.approx(0.2 - 0.05)
    # An identical blend with less spread there clears it.
    steady = np.array([0.2, 0.2, 0.35, 0.35])
    assert objective(steady, queries, floors, margin_se=2.0) == pytest.approx(0.2)


def test_a_shortfall_is_what_a_kind_of_query_lacks_of_its_floor() -> None:
    """The tail targets' floor in the text map's choice is charged as a protocol's is."""
    assert shortfall(np.array([0.3, 0.4]), 0.2, margin_se=0) == 0.0
    assert shortfall(np.array([0.1, 0.1]), 0.2) == pytest.approx(-0.1)
    # Mean 0.35, standard error 0.05: a floor of 0.3 is charged 0.05 at 2 errors.
    assert shortfall(np.array([0.3, 0.4]), 0.3, margin_se=2.0) == pytest.approx(-0.05)
    assert shortfall(np.array([]), 0.5) == 0.0  # no such query: nothing to charge


def test_a_strategy_overtakes_the_shipped_order_only_surely() -> None:
    rng = np.random.default_rng(3)
    protocols = np.array(["term", "words", "refind"] * 200)
    floors = {"term": 0.0, "words": 0.0, "refind": 0.0}
    base = rng.uniform(0.0, 1.0, protocols.size)
    # A near tie (a few queries' worth): not sure either way.
    tie = base.copy()
    tie[:3] += 0.05
    assert 0.05 < overtake_share(tie, base, protocols, floors) < 0.95
    # Better on every discovery query: sure.
    better = np.where(protocols == "refind", base, base + 0.1)
    assert overtake_share(better, base, protocols, floors) == 1.0
    shares = {("b", "a"): 0.6, ("c", "b"): 0.99, ("c", "a"): 0.97, ("a", "c"): 0.0,
              ("b", "c"): 0.0, ("a", "b"): 0.4}
    order, asked = stable_order(["a", "b", "c"], lambda x, y: shares[(x, y)])
    # c surely beats both and leads; b's 60% over a does not move it.
    assert order == ["c", "a", "b"]
    assert asked["b > a"] == 0.6 and asked["c > a"] == 0.97
    assert stable_order(["a", "b"], lambda x, y: shares[(x, y)])[0] == ["a", "b"]


def test_a_behaviour_setting_replaces_the_shipped_one_only_surely() -> None:
    values = {"shipped": 0.300, "near": 0.301, "sure": 0.310, "surer": 0.320}
    shares = {("near", "shipped"): 0.7, ("sure", "shipped"): 0.96,
              ("surer", "shipped"): 0.99}
    share = lambda c, i: shares[(c, i)]  # noqa: E731
    # A better mean on a near tie keeps what ships.
    assert stable_choice("shipped", ["near"], share, values.__getitem__) == "shipped"
    # Of the sure winners, the best.
    assert stable_choice("shipped", ["near", "sure", "surer"], share,
                         values.__getitem__) == "surer"
    assert stable_choice("shipped", [], share, values.__getitem__) == "shipped"


def test_the_tail_floor_counts_in_the_resampled_objective() -> None:
    protocols = np.array(["term", "words"] * 100)
    floors = {"term": 0.0, "words": 0.0, "refind": 0.0}
    tail = np.arange(protocols.size) < 40
    incumbent = np.full(protocols.size, 0.5)
    # Better overall, far below the tail's floor on the tail targets.
    challenger = np.where(tail, 0.3, 0.7)
    assert overtake_share(challenger, incumbent, protocols, floors) == 1.0
    assert overtake_share(challenger, incumbent, protocols, floors, tail=tail,
                          tail_floor=0.5) == 0.0


def test_the_report_names_what_differs_between_two_behaviour_candidates() -> None:
    from plugin.evaluation.report import _setting_change

    held = "model als, text_map false, als_regularization 2.0, min_interactions 3"
    assert _setting_change(f"model ppmi_svd, text_map false > {held}") == (
        "model ppmi_svd over model als")
    assert _setting_change(
        f"model als, text_map true, text_map_confidence 0.3, als_regularization 2.0, "
        f"min_interactions 3 > {held}"
    ) == "text_map true, text_map_confidence 0.3 over text_map false"
