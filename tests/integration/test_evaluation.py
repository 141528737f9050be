"""Smoke test of the evaluation: the quick protocol end to end on a dozen users."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plugin.config import (
    BEHAVIOUR_MODELS,
    BLEND_STRATEGIES,
    LOCAL_ENGINE_URLS,
    PLACED_POLICIES,
    SEEN_POLICIES,
    load_ranking,
    load_settings,
)
from plugin.evaluation import api_check
from plugin.evaluation import run as evaluation
from plugin.evaluation.data import PROTOCOLS
from plugin.evaluation.run import SUPPORT_EXPONENTS, run
from plugin.services import Services

pytestmark = pytest.mark.integration


def test_api_check_searches_held_out_likes_through_the_api(tmp_path: Path, stack: None) -> None:
    """`es-interest eval-api` on a few users: a deployment of its own built through the
    pipeline, every probe searched through /search with and without its user, the
    deployment gone afterwards."""
    result = api_check.run("elasticsearch", users=4, held_out=1, seed=5,
                           echo=lambda _: None)
    assert result["events_applied"] == result["events"] > 0
    assert result["behaviour_documents"] > 0
    assert sum(result["personalized"].values()) == len(result["per_probe"]) > 0
    assert result["personalized"].get("personalized", 0) > 0
    for form in (*api_check.FORMS, api_check.REFIND):
        figures = result["forms"][form]
        assert figures["probes"] == sum(1 for p in result["per_probe"] if p[2] == form) > 0
        low, high = figures["mrr@100"]["difference_ci"]
        assert low <= figures["mrr@100"]["mean_diff"] <= high
    written = api_check.write(result, tmp_path)
    assert "| title word, liked before |" in written.read_text()
    assert json.loads((tmp_path / "api_check.json").read_text())["seed"] == 5
    services = Services(load_settings())
    # The deployment it built is gone (a wildcard matching nothing answers empty).
    assert dict(services.engine.client.indices.get(index="apicheck-*")) == {}


def test_a_stopped_evaluation_leaves_no_indices(tmp_path: Path, stack: None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped after it indexed (here: a fault in its first tuning step) removes its
    deployment all the same."""
    services = Services(load_settings())

    def evaluation_indices() -> set[str]:
        return set(services.engine.client.indices.get(index="eval-*"))

    before = evaluation_indices()
    created: list[set[str]] = []

    def stop(*_: object, **__: object) -> None:
        created.append(evaluation_indices() - before)
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "_half_lives", stop)
    with pytest.raises(KeyboardInterrupt):
        run(quick=True, users=4, engines=["elasticsearch"], out_dir=tmp_path,
            progress=lambda _: None, choose=False)
    assert created and created[0]  # it had indexed
    assert evaluation_indices() == before


def test_quick_evaluation_writes_its_report(tmp_path: Path, stack: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # OpenSearch 2.19 adds nothing the other three do not cover here (the same strategies as 3.x).
    engines = [name for name in LOCAL_ENGINE_URLS if name != "opensearch2"]
    # The behaviour support's smaller deployment, below this run's dozen users (40: none).
    monkeypatch.setattr(evaluation, "SUPPORT_USERS", (8, 40))
    results = run(quick=True, users=12, engines=engines, out_dir=tmp_path,
                  progress=lambda _: None, choose=True)
    report = (tmp_path / "evaluation.md").read_text()
    assert report.count("## Results on ") == len(engines)
    for protocol in PROTOCOLS:
        assert report.count(f"### {protocol} queries") == len(engines)
    for name in ("ndcg_by_method.png", "ndcg_vs_half_life.png", "interest_drift.png"):
        assert (tmp_path / name).stat().st_size > 1000
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["test_queries"] == results["test_queries"] > 0
    # The configuration chosen is a ranking file the product can read.
    chosen = load_ranking(tmp_path / "ranking.json")
    assert chosen["weights"]["linear_retriever"]["bm25"] == 1.0
    # What the user knows keeps its place: only such a policy ships.
    assert chosen["seen_policy"] in PLACED_POLICIES
    # Every policy was tuned and held to each protocol's floor on validation.
    assert set(saved["seen_policy"]["validation"]) == set(SEEN_POLICIES)
    assert set(saved["seen_policy"]["floors"]) == set(PROTOCOLS)
    # ... on the first engine's default strategy (scored offline where it tunes offline).
    assert saved["seen_policy"]["strategy"] == saved["engines"][engines[0]]["strategies"][0]
    assert chosen["embed_title_cleanup"] in ("years", "none")
    # Each behaviour model was scored at every value of its own settings (at its own best,
    # not at a default that need not suit it) before the models competed.
    labels = saved["behaviour_choice"]["validation"]
    assert {label.split(",")[0].removeprefix("model ") for label in labels} == set(
        BEHAVIOUR_MODELS)
    for name, grid in evaluation.MODEL_GRIDS.items():
        own = [label for label in labels if label.startswith(f"model {name},")]
        for key, values in grid.items():
            for value in values:
                assert any(f"{key.removeprefix('behaviour_')} {value}" in label
                           for label in own), (name, key, value)
    # Every strategy the first engine offers is tuned offline on every validation query;
    # each blend recomputed in the process ranks the targets where the engine does (ties
    # and the kNN search's approximation aside).
    assert set(saved["offline_agreement"]) == set(saved["engines"][engines[0]]["offered"])
    for agreement in saved["offline_agreement"].values():
        assert agreement["queries"] == saved["validation_queries"]
        assert agreement["same_rank"] >= 0.9
        assert abs(agreement["offline_ndcg@10"] - agreement["engine_ndcg@10"]) < 0.03
    assert "tuned offline" in report
    for engine in engines:
        res = saved["engines"][engine]
        # The real pipeline folds exactly what the offline replay folds.
        assert res["pipeline_vs_offline_max_abs"] < 1e-5
        assert res["behaviour"]["trained"]
        for block in res["protocols"].values():
            assert block["queries"] > 0
            for method in block["methods"].values():
                low, high = method["ndcg@10"]["ci95"]
                assert 0 <= low <= method["ndcg@10"]["mean"] <= high <= 1
            # Each engine's default strategy, with the ablations, controls and its tests;
            # the comparator's arms span every strategy the engine offers.
            assert set(block["tests"]) == set(res["strategies"])
            assert {m["strategy"] for m in block["methods"].values()} == {"-", *res["offered"]}
        for protocol, block in res["protocols"].items():
            validation = res["comparator_validation"][protocol]
            assert block["comparator"] == max(validation, key=lambda n: validation[n])
            assert {f"non-personalized default ({s})" for s in res["offered"]} <= set(validation)
            # Every arm's per-query ranks are kept, one per test query.
            ranks = saved["per_query"][engine][protocol]["ranks"]
            assert set(ranks) == set(block["methods"])
            assert {len(r) for r in ranks.values()} == {block["queries"]}
        assert res["strategies"] == res["strategy_ranking"]
        assert set(res["strategies"]) <= set(BLEND_STRATEGIES)
    first = saved["engines"][engines[0]]
    # The leak bound: the default and the comparator on every test query, past only.
    for protocol, bound in first["leak_bound"]["protocols"].items():
        assert len(saved["per_query"][engines[0]]["past_only"][protocol]["default"]) == \
            first["protocols"][protocol]["queries"]
        assert 0 <= bound["ours"]["mean"] <= 1 and 0 <= bound["comparator"]["mean"] <= 1
    assert "### Leak bound" in report
    # The language model fine-tuned on the log, against the shipped one, on validation.
    trial = first["language_model"]
    assert trial["report"]["trained"] and trial["report"]["steps"] > 0
    assert set(trial["models"]) == {"shipped", "fine-tuned"}
    assert "Language model fine-tuned on the log" in report
    # The learned ranker, measured on the first engine's default strategy: both forms with
    # and without a user, each with a rank per test query (or why a run this small skipped it).
    learned = first["learned_ranker"]
    assert learned["strategy"] == first["strategies"][0]
    assert "## A learned ranker, measured" in report
    if "skipped" not in learned:
        arms = {f"{form}, {who}" for form in ("linear", "learned")
                for who in ("personalized", "non-personalized")}
        assert set(learned["ranks"]) == set(learned["test"]) == arms
        assert {len(r) for r in learned["ranks"].values()} == {saved["test_queries"]}
        assert set(learned["personalization_gain"]) == {"linear", "learned"}
    # The quick run personalizes each engine's default: the first strategy it offers in the
    # shipped strategy_order.
    order = load_settings().strategy_order
    for engine in engines:
        res = saved["engines"][engine]
        assert res["offered"] == sorted(res["offered"], key=order.index)
        assert res["strategies"] == res["offered"][:1]
    assert "linear_retriever" not in saved["engines"]["opensearch"]["offered"]
    assert "linear_retriever" in saved["engines"]["elasticsearch8"]["offered"]
    # The short-term half-life was chosen beside behaviour, among the candidates, and every
    # engine and the ranking file use the one chosen.
    shorts = saved["short_half_life_validation"]
    assert len(shorts) == 3 and sum(c["chosen"] for c in shorts) == 1
    picked = next(c for c in shorts if c["chosen"])
    assert picked["objective"] == max(c["objective"] for c in shorts)
    assert saved["half_lives"][1] == picked["short_days"] == chosen["half_life_short_days"]
    assert "Short-term half-life, chosen beside behaviour" in report
    # The behaviour support exponent, scored at the run's size and on an 8-user deployment
    # (its indices gone), the best summed objective chosen, as the ranking file says.
    support = saved["behaviour_support"]
    assert [(r["users"], r["exponent"]) for r in support] == [
        (size, e) for size in (saved["users"], 8) for e in SUPPORT_EXPONENTS]
    assert all(0 <= r["coverage"] <= 1 for r in support)
    totals = {e: sum(r["objective"] for r in support if r["exponent"] == e)
              for e in SUPPORT_EXPONENTS}
    picked_exponent = chosen["behaviour_support_exponent"]
    assert {r["exponent"] for r in support if r["chosen"]} == {picked_exponent}
    assert totals[picked_exponent] == pytest.approx(max(totals.values()), abs=1e-3)
    assert "Behaviour support" in report
