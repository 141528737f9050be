from __future__ import annotations

import math

import numpy as np
import pytest

from plugin.evaluation.metrics import bootstrap_ci, ndcg_at, paired_test, per_query


def test_rank_metrics() -> None:
    assert ndcg_at(1) == 1.0 and ndcg_at(3) == pytest.approx(1 / math.log2(4))
    assert ndcg_at(11) == 0.0 and ndcg_at(None) == 0.0
    values = per_query([1, 2, None, 150])
    assert list(values["mrr"]) == [1.0, 0.5, 0.0, 1 / 150]
    assert list(values["recall@100"]) == [1.0, 1.0, 0.0, 0.0]


def test_bootstrap_and_paired_test() -> None:
    rng = np.random.default_rng(1)
    a = rng.uniform(0.4, 0.6, 300)
    low, high = bootstrap_ci(a)
    assert low < a.mean() < high and high - low < 0.05
    better = paired_test(a + 0.05, a)
    assert better["mean_diff"] == pytest.approx(0.05) and better["p_wilcoxon"] < 1e-6
    assert paired_test(a, a + 0.05)["p_bootstrap"] > 0.9


def test_paired_test_on_a_few_tied_differences() -> None:
    # Ten queries, ties among the differences: scipy's conservative exact null, which for
    # "all ten better" gives 1/1024, and for an even split nothing near significance.
    better = paired_test(np.full(10, 0.5), np.full(10, 0.25))
    assert better["p_wilcoxon"] == pytest.approx(1 / 1024)
    mixed = paired_test(np.array([0.5] * 5 + [0.0] * 5), np.array([0.0] * 5 + [0.5] * 5))
    assert mixed["p_wilcoxon"] > 0.4
