"""Smoke test of the evaluation: the quick protocol end to end on a dozen users."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plugin.config import BLEND_STRATEGIES, LOCAL_ENGINE_URLS
from plugin.evaluation.run import run

pytestmark = pytest.mark.integration


def test_quick_evaluation_writes_its_report(tmp_path: Path, stack: None) -> None:
    engines = list(LOCAL_ENGINE_URLS)
    results = run(quick=True, users=12, engines=engines, out_dir=tmp_path,
                  progress=lambda _: None)
    report = (tmp_path / "evaluation.md").read_text()
    assert report.count("## Results on ") == len(engines)
    for name in ("ndcg_by_method.png", "ndcg_vs_half_life.png", "interest_drift.png"):
        assert (tmp_path / name).stat().st_size > 1000
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["test_queries"] == results["test_queries"] > 0
    for engine in engines:
        res = saved["engines"][engine]
        # The real pipeline folds exactly what the offline replay folds.
        assert res["pipeline_vs_offline_max_abs"] < 1e-5
        for method in res["methods"].values():
            low, high = method["ndcg@10"]["ci95"]
            assert 0 <= low <= method["ndcg@10"]["mean"] <= high <= 1
        # Every strategy the engine offers is evaluated there, and ranked for `auto`.
        assert set(res["strategy_ranking"]) == set(res["strategies"]) <= set(BLEND_STRATEGIES)
        assert {m["strategy"] for m in res["methods"].values()} == set(res["strategies"])
    assert "script_score" in saved["engines"]["opensearch"]["strategies"]
    assert "linear_retriever" in saved["engines"]["elasticsearch8"]["strategies"]
