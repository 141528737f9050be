"""The behaviour-ceiling stand-in's scorers: pure functions, no services."""

from __future__ import annotations

from typing import Any

import numpy as np

from plugin.evaluation.behaviour_ceiling import (
    cold_content_scorer,
    decayed_vector,
    ease_scorer,
    folded_vector_scorer,
    markdown,
)


def test_ease_scores_what_the_users_likes_are_liked_with_above_the_rest() -> None:
    # Ten users like "a" and "b" together; ten others like "c" and "d" together.
    sequences = {f"u{n}": ["a", "b"] for n in range(10)}
    sequences |= {f"v{n}": ["c", "d"] for n in range(10)}
    sequences["me"] = ["a"]
    score = ease_scorer(sequences, penalty=1.0, min_users=1)
    b, c, d, unknown = score("me", ["b", "c", "d", "z"])
    assert b > 0.1
    assert abs(c) < 1e-9 and abs(d) < 1e-9
    assert unknown == 0.0
    assert np.all(score("nobody", ["a", "b"]) == 0.0)


def test_the_folded_vector_is_the_weighted_sum_of_the_rated_documents() -> None:
    vectors = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0]),
               "c": np.array([0.6, 0.8])}
    # Liked "a" twice as much as "b", disliked nothing: the sum points at (2, 1).
    score = folded_vector_scorer(vectors, {"me": {"a": 2.0, "b": 1.0}, "cold": {"x": 1.0}})
    expected = np.array([2.0, 1.0]) / np.sqrt(5.0)
    np.testing.assert_allclose(score("me", ["c", "x"]), [vectors["c"] @ expected, 0.0])
    assert np.all(score("cold", ["a", "c"]) == 0.0)


def test_the_table_names_each_arm_and_its_gain() -> None:
    rows: list[dict[str, Any]] = [
        {"protocol": "term", "arm": "popularity", "weight": None, "queries": 9,
         "mrr": 0.2, "ndcg@10": 0.25},
        {"protocol": "term", "arm": "EASE", "weight": 2.0, "queries": 9, "mrr": 0.24,
         "ndcg@10": 0.3, "mrr_gain": 0.2, "mrr_diff_ci": (0.01, 0.07), "p": 0.001}]
    table = markdown({"models": rows})
    assert "`make eval` takes one: term 9)" in table
    assert "Tail targets" not in table
    assert "| term | popularity | - | 0.2000 | 0.2500 |" in table
    assert "| term | EASE | 2 | 0.2400 | 0.3000 | +20.0% | [+0.0100, +0.0700] | 0.001 |" in table


def test_the_cold_content_term_scores_only_documents_without_a_behaviour_vector() -> None:
    embeddings = {"a": np.array([1.0, 0.0]), "warm": np.array([0.8, 0.6]),
                  "cold": np.array([0.6, 0.8])}
    score = cold_content_scorer(embeddings, {"me": {"a": 1.0}, "nobody": {}},
                                {"a": np.zeros(2), "warm": np.zeros(2)})
    # The profile is "a"'s direction: the cold document gets its cosine, the warm one none.
    np.testing.assert_allclose(score("me", ["warm", "cold", "unknown"]), [0.0, 0.6, 0.0])
    assert np.all(score("nobody", ["cold"]) == 0.0)


def test_the_tail_table_shows_each_content_weight_against_none() -> None:
    models: list[dict[str, Any]] = [
        {"protocol": "term", "arm": "popularity", "weight": None, "queries": 9,
         "mrr": 0.2, "ndcg@10": 0.25}]
    tail: list[dict[str, Any]] = [
        {"content_weight": w, "weight": 1.0, "queries": 9, "tail_queries": 2, "mrr": 0.2,
         "ndcg@10": 0.25, "ndcg_diff": d, "tail_ndcg@10": 0.01 + d, "tail_mrr": 0.01,
         "tail_ndcg_diff_ci": (0.0, 2 * d), "tail_p": {"p_bootstrap": 0.5, "p_wilcoxon": 1.0}}
        for w, d in ((0.0, 0.0), (2.0, 0.005))]
    table = markdown({"models": models, "tail": tail})
    assert "(2 of 9 with a tail target: fewer than\n3 users" in table
    assert ("| 2 | 1 | 0.2000 | 0.2500 | +0.0050 | 0.0150 | 0.0100 | [+0.0000, +0.0100] "
            "| 0.5 / 1 |") in table


def test_the_decayed_vector_weighs_recent_events_more_and_the_last_liked_form_counts() -> None:
    vectors = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0])}
    events = [{"doc_id": "a", "weight": 1.0, "timestamp": 0},
              {"doc_id": "b", "weight": 1.0, "timestamp": 10},
              {"doc_id": "b", "weight": -1.0, "timestamp": 10, "note": "a dislike"},
              {"doc_id": "a", "type": "comment", "timestamp": 20}]  # no weight: not rated
    # One half-life apart: "a" counts half of "b"'s like, which the dislike cancels.
    vector = decayed_vector(events[:2], vectors, 10.0)
    assert vector is not None
    np.testing.assert_allclose(vector, np.array([0.5, 1.0]) / np.sqrt(1.25))
    only_a = decayed_vector(events[:3], vectors, 10.0)
    assert only_a is not None
    np.testing.assert_allclose(only_a, [1.0, 0.0])
    last = decayed_vector(events, vectors, None, last=1)
    assert last is not None
    np.testing.assert_allclose(last, [0.0, 1.0])
    assert decayed_vector(events[3:], vectors, 10.0) is None


def test_the_dynamic_table_shows_both_profiles_and_their_difference() -> None:
    models: list[dict[str, Any]] = [
        {"protocol": "term", "arm": "popularity", "weight": None, "queries": 9,
         "mrr": 0.2, "ndcg@10": 0.25}]
    dynamic: list[dict[str, Any]] = [
        {"form": "last 3 liked", "queries": 9, "long_days": 30.0, "static": 0.2,
         "dynamic": 0.21, "static_weights": (1.0, 0.5), "dynamic_weights": (0.5, 2.0),
         "diff_ci": (0.001, 0.02), "p": {"p_bootstrap": 0.01, "p_wilcoxon": 0.02}}]
    table = markdown({"models": models, "dynamic": dynamic})
    assert "half-life 30 d" in table
    assert ("| last 3 liked | 0.2000 | 1, 0.5 | 0.2100 | 0.5, 2 | +0.0100 [+0.0010, +0.0200] "
            "| 0.01 / 0.02 |") in table
