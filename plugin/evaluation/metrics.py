"""Ranking metrics for one relevant item per query, with bootstrap intervals and paired tests."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from plugin.evaluation import data

Ranks = Sequence[int | None]  # 1-based rank of the held-out item, None when not retrieved


def ndcg_at(rank: int | None, k: int = 10) -> float:
    return 1.0 / math.log2(rank + 1) if rank is not None and rank <= k else 0.0


def reciprocal_rank(rank: int | None) -> float:
    return 1.0 / rank if rank is not None else 0.0


def recall_at(rank: int | None, k: int = 100) -> float:
    return 1.0 if rank is not None and rank <= k else 0.0


METRICS = {"ndcg@10": ndcg_at, "mrr": reciprocal_rank, "recall@100": recall_at}


def per_query(ranks: Ranks) -> dict[str, npt.NDArray[np.float64]]:
    return {name: np.array([fn(r) for r in ranks], dtype=np.float64)
            for name, fn in METRICS.items()}


def bootstrap_ci(values: npt.NDArray[np.float64], samples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(samples, len(values)))
    means = values[idx].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


EXACT_WILCOXON_MAX = 13


def paired_test(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64],
                samples: int = 5000, seed: int = 0) -> dict[str, float]:
    """Is mean(a) > mean(b)? Paired bootstrap (one-sided) and Wilcoxon signed-rank p-values."""
    from scipy.stats import wilcoxon

    diff = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(samples, len(diff)))
    boot = diff[idx].mean(axis=1)
    p_boot = float((np.sum(boot <= 0) + 1) / (samples + 1))
    nonzero = diff[diff != 0]
    # scipy's "auto" runs a permutation test on 13 or fewer differences with ties, seconds
    # each; "exact" is its conservative null distribution for ties (and no p below 0.01 is
    # within reach of so few queries anyway).
    method = "exact" if len(nonzero) <= EXACT_WILCOXON_MAX else "auto"
    p_wilcoxon = (float(wilcoxon(nonzero, alternative="greater", method=method).pvalue)
                  if len(nonzero) > 0 else 1.0)
    return {"mean_diff": float(diff.mean()), "p_bootstrap": p_boot, "p_wilcoxon": p_wilcoxon}


def mean_kendall_tau(first: Sequence[Sequence[str]], second: Sequence[Sequence[str]]) -> float:
    """Mean Kendall's tau-b of two rankings per query over the union of their top lists (a
    document missing from one list ranks just below its end there)."""
    from scipy.stats import kendalltau

    taus = []
    for a, b in zip(first, second, strict=True):
        union = list(dict.fromkeys([*a, *b]))
        if len(union) < 2:
            continue
        rank_a = {d: i for i, d in enumerate(a)}
        rank_b = {d: i for i, d in enumerate(b)}
        tau = kendalltau([rank_a.get(d, len(a)) for d in union],
                         [rank_b.get(d, len(b)) for d in union]).statistic
        if not math.isnan(tau):
            taus.append(float(tau))
    return float(np.mean(taus)) if taus else float("nan")


def protocol_means(ndcg: npt.NDArray[np.float64], queries: Sequence[data.Query]
                   ) -> dict[str, float]:
    """Each protocol's mean per-query NDCG@10 (what a choice's table shows beside its
    objective)."""
    protocols = np.array([q.protocol for q in queries])
    return {p: float(ndcg[protocols == p].mean()) for p in data.PROTOCOLS}
