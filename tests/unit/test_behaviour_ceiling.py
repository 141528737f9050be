"""The behaviour-ceiling stand-in's scorers: pure functions, no services."""

from __future__ import annotations

from typing import Any

import numpy as np

from plugin.evaluation.behaviour_ceiling import ease_scorer, folded_vector_scorer, markdown


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
    table = markdown(rows)
    assert "`make eval` takes one: term 9)" in table
    assert "| term | popularity | - | 0.2000 | 0.2500 |" in table
    assert "| term | EASE | 2 | 0.2400 | 0.3000 | +20.0% | [+0.0100, +0.0700] | 0.001 |" in table
