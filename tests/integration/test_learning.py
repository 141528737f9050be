"""Popularity, behaviour vectors and the calibrated blend on the real engines, Redis and model.

The module runs on its own index prefix with a 7-day popularity half-life and small behaviour
vectors, so that its decay and retraining touch no other test's documents.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from plugin import pipeline
from plugin.caches import behaviour_version_key
from plugin.evaluation.data import Query
from plugin.evaluation.metrics import mean_kendall_tau
from plugin.evaluation.offline_blend import TERMS, LocalVectors, OfflineBlend, QueryTerms, TermStore
from plugin.interest import UserInterest
from plugin.pipeline import behaviour, popularity
from plugin.pipeline.doc_vectors import fetch_doc_vectors
from plugin.profile import describe_user
from plugin.search import (
    BlendWeights,
    SearchParams,
    UserVectors,
    available_strategies,
    search,
)
from plugin.services import Services
from tests.conftest import WorkerProcess, isolated_services

pytestmark = pytest.mark.integration

DAY = 86400.0
T0 = 1.7e9


@pytest.fixture(scope="module")
def learning(services: Services) -> Iterator[Services]:
    # Its own Redis database too: its worker (the last test) must not share queues with the
    # session's worker, which serves other indices. Learned behaviour vectors only, whatever
    # the ranking file ships: the tests count which documents a training gives one, and the
    # cold documents' test turns the text map on for itself.
    settings = replace(services.settings, index_prefix=services.settings.index_prefix + "-learn",
                       redis_url="redis://127.0.0.1:6379/10",
                       popularity_half_life_s=7 * DAY, behaviour_dims=8,
                       behaviour_min_interactions=2, personal_candidates=1000,
                       behaviour_text_map=False)
    yield from isolated_services(settings)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def event(user: str, doc: str, kind: str, t: float) -> dict[str, Any]:
    # Whole seconds: the log keeps milliseconds, and the replay below must see the same times.
    return {"event_id": uid("e"), "user_id": user, "doc_id": doc, "type": kind,
            "timestamp": round(t)}


def indexed_items(svc: Services, run: str, topic: str, count: int) -> list[str]:
    """``count`` documents titled "<topic> item <n>", tagged ``topic``; their ids."""
    ids = [f"{run}-{i}" for i in range(count)]
    docs = [{"id": d, "title": f"{topic} item {i}", "tags": [topic]} for i, d in enumerate(ids)]
    assert not pipeline.index_documents(svc, docs, refresh=True).errors
    return ids


def stored_popularity(svc: Services, ids: list[str]) -> dict[str, float | None]:
    svc.engine.client.indices.refresh(index=svc.settings.docs_alias)
    found = svc.engine.mget_versioned(svc.settings.docs_alias, ids)
    return {d: found[d][0].get("popularity") for d in ids}


def test_popularity_equals_an_exact_replay_of_the_log(learning: Services) -> None:
    run = uid("pop")
    ids = [f"{run}-{i}" for i in range(6)]
    docs = [{"id": d, "title": f"popular thing {i}", "tags": ["popular"]}
            for i, d in enumerate(ids)]
    # The last document arrives after its events: they wait, then count.
    assert not pipeline.index_documents(learning, docs[:5], refresh=True).errors
    rng = random.Random(4)
    kinds = ["like", "click", "purchase", "dislike", "view"]
    events = [event(f"u{rng.randrange(8)}", rng.choice(ids[:5] + [ids[5]] * 2),
                    rng.choice(kinds), T0 + rng.uniform(0, 40) * DAY) for _ in range(80)]
    events += [event("hater", ids[4], "dislike", T0 + d * DAY) for d in range(3)]
    rng.shuffle(events)  # late events everywhere
    for start in range(0, len(events), 20):
        batch = events[start:start + 20]
        assert not pipeline.ingest_events(learning, batch).errors
        if start == 20:  # a redelivered batch counts once
            report = pipeline.ingest_events(learning, batch)
            assert sorted(report.duplicates) == sorted(e["event_id"] for e in batch)
    assert not pipeline.index_documents(learning, docs[5:], refresh=True).errors
    popularity.flush(learning, refresh=True)

    weights = learning.settings.event_weights
    expected = popularity.replay([(e["doc_id"], e["timestamp"], weights[e["type"]])
                                  for e in events], 7 * DAY)
    now = max(e["timestamp"] for e in events)
    values = {d: popularity.value_at(expected[d], now, 7 * DAY) for d in ids}
    assert values[ids[4]] < 0 or values[ids[4]] > 0  # every document has events
    stored = stored_popularity(learning, ids)
    for doc_id in ids:
        if values[doc_id] >= popularity.MIN_VALUE:
            assert stored[doc_id] == pytest.approx(values[doc_id], rel=1e-5, abs=1e-6)
        else:
            assert stored[doc_id] is None  # net dislike: no popularity at all
    assert popularity.values(learning, ids) == pytest.approx(values, rel=1e-9)

    # Re-indexing a document keeps it; a rebuild from the log gives the same values.
    assert not pipeline.index_documents(learning, docs[:1], refresh=True).errors
    assert stored_popularity(learning, ids[:1]) == {ids[0]: stored[ids[0]]}
    popularity.rebuild(learning)
    assert popularity.values(learning, ids) == pytest.approx(values, rel=1e-9)
    assert stored_popularity(learning, ids) == pytest.approx(stored, rel=1e-6)


def test_a_backtest_learns_popularity_and_behaviour_from_the_past_only(
        learning: Services) -> None:
    run = uid("past")
    ids = [f"{run}-{i}" for i in range(6)]
    assert not pipeline.index_documents(learning, [
        {"id": d, "title": f"backtest item {i}", "tags": ["backtest"]}
        for i, d in enumerate(ids)], refresh=True).errors
    users = [f"{run}-u{u}" for u in range(4)]
    early = [event(u, d, "like", T0 + n * DAY) for n, u in enumerate(users) for d in ids[:3]]
    late = [event(u, d, "like", T0 + 30 * DAY + n) for n, u in enumerate(users)
            for d in ids[3:]]
    assert not pipeline.ingest_events(learning, early + late).errors
    cut_ms = int((T0 + 20 * DAY) * 1000)
    popularity.flush(learning, refresh=True, max_docs=0, tolerance=0.0)
    assert all(v is not None for v in stored_popularity(learning, ids).values())

    popularity.rebuild(learning, before_ms=cut_ms)
    weights = learning.settings.event_weights
    expected = popularity.replay([(e["doc_id"], e["timestamp"], weights[e["type"]])
                                  for e in early], 7 * DAY)
    # Values are decayed to the newest event before the cut (other tests' events count too).
    now = popularity.clock(learning)
    assert now is not None and max(e["timestamp"] for e in early) <= now < cut_ms / 1000
    stored = stored_popularity(learning, ids)
    for doc_id in ids[:3]:
        assert stored[doc_id] == pytest.approx(
            popularity.value_at(expected[doc_id], now, 7 * DAY), rel=1e-5)
    # The later documents' values are gone: no event before the cut supports them.
    assert [stored[d] for d in ids[3:]] == [None] * 3
    trained = behaviour.train(learning, refold=False, before_ms=cut_ms)
    assert trained["trained"]
    vectors = learning.engine.mget_sources(learning.settings.docs_alias, ids)
    assert ([vectors[d].get("behaviour_version") for d in ids]
            == [trained["version"]] * 3 + [None] * 3)

    popularity.rebuild(learning)  # the whole log again
    assert all(v is not None for v in stored_popularity(learning, ids).values())
    behaviour.train(learning)


def test_behaviour_refold_after_a_retrain_equals_a_rebuild(learning: Services) -> None:
    run = uid("beh")
    ids = indexed_items(learning, run, "behaviour", 8)
    users = [f"{run}-u{u}" for u in range(6)]
    rng = random.Random(9)
    events = [event(u, d, "like", T0 + rng.uniform(0, 10) * DAY)
              for u in users for d in rng.sample(ids[:4] if u[-1] in "012" else ids[4:], 3)]
    assert not pipeline.ingest_events(learning, events).errors

    first = behaviour.train(learning)
    assert first["trained"] and first["users_deferred"] == 0
    second = behaviour.train(learning)  # a new space: every user is folded again in it
    assert second["version"] > first["version"]
    late = event(users[0], ids[1], "purchase", T0 + 5 * DAY)  # folded incrementally
    assert not pipeline.ingest_events(learning, [late]).errors
    for user_id in users:
        found = learning.engine.get_versioned(learning.settings.interests_alias, user_id)
        assert found is not None
        folded = UserInterest.from_source(found[0])
        pipeline.rebuild_user(learning, user_id)
        rebuilt = UserInterest.from_source(
            learning.engine.get_versioned(learning.settings.interests_alias, user_id)[0])
        assert folded.behaviour_version == rebuilt.behaviour_version == second["version"]
        assert folded.behaviour is not None and rebuilt.behaviour is not None
        assert folded.behaviour.vector_sum == pytest.approx(rebuilt.behaviour.vector_sum,
                                                            abs=1e-9)

    # Search uses a user's behaviour vector only in the documents' version.
    params = SearchParams("behaviour item", user_id=users[0], size=8, explain=True,
                          weights=BlendWeights(1.0, behaviour=1.0))
    hits = search(learning, params).hits
    assert any(h["components"].get("behaviour") is not None for h in hits)
    learning.redis.set(behaviour_version_key(learning.settings), "000000000000001")
    time.sleep(10.5)  # the version is cached for 10 s per process
    hits = search(learning, replace(params, use_cache=False)).hits
    assert all(h["components"].get("behaviour") is None for h in hits)
    learning.redis.set(behaviour_version_key(learning.settings), second["version"])


def test_search_weighs_the_behaviour_terms_by_the_models_coverage(learning: Services) -> None:
    run = uid("cov")
    ids = indexed_items(learning, run, "coverage", 6)
    users = [f"{run}-u{u}" for u in range(4)]
    # Three users share ids[:3]; the fourth's likes (ids[3:]) nobody else has.
    events = [event(u, d, "like", T0 + n * DAY) for u in users[:3] for n, d in enumerate(ids[:3])]
    events += [event(users[3], d, "like", T0 + n * DAY) for n, d in enumerate(ids[3:])]
    assert not pipeline.ingest_events(learning, events).errors

    trained = behaviour.train(learning)
    expected = behaviour.target_coverage(behaviour.positive_sequences(learning),
                                         learning.settings.behaviour_min_interactions)
    assert trained["trained"] and 0.0 < expected < 1.0
    assert trained["coverage"] == round(expected, 4)
    # The factor on the behaviour terms: the coverage to the configured power.
    strict = Services(replace(learning.settings, behaviour_support_exponent=2.0))
    params = SearchParams("coverage item", user_id=users[0], size=6,
                          weights=BlendWeights(1.0, behaviour=1.0, behaviour_short=0.5))
    result = search(strict, params)
    assert result.personalized and result.weights is not None
    assert result.weights.behaviour == pytest.approx(expected ** 2.0)
    assert result.weights.behaviour_short == pytest.approx(0.5 * expected ** 2.0)
    # The user's page says so.
    page = describe_user(strict, users[0])
    assert page is not None
    assert page["horizons"]["behaviour"]["support"] == pytest.approx(expected ** 2.0)
    # Exponent 0: full weight whatever the coverage.
    trusting = Services(replace(learning.settings, behaviour_support_exponent=0.0))
    weights = search(trusting, params).weights
    assert weights is not None and weights.behaviour == 1.0


def test_a_process_that_cached_documents_folds_with_a_new_trainings_vectors(
        learning: Services) -> None:
    """A worker caches documents' vectors as it folds; a training elsewhere (`es-interest
    train`, another worker) must not leave it folding the next events without them."""
    run = uid("cached")
    ids = [f"{run}-{i}" for i in range(4)]
    assert not pipeline.index_documents(learning, [
        {"id": d, "title": f"cached item {i}", "tags": ["cached"]} for i, d in enumerate(ids)],
        refresh=True).errors
    worker = Services(learning.settings)  # another process: caches of its own
    events = [event(f"{run}-u{u}", d, "like", T0 + u * DAY) for u in range(3) for d in ids]
    assert not pipeline.ingest_events(worker, events).errors  # cached, no behaviour vectors yet
    trained = behaviour.train(learning)
    assert trained["trained"]
    newcomer = f"{run}-newcomer"
    assert not pipeline.ingest_events(worker, [event(newcomer, ids[0], "like", T0)]).errors
    found = learning.engine.get_versioned(learning.settings.interests_alias, newcomer)
    assert found is not None
    folded = UserInterest.from_source(found[0])
    assert folded.behaviour_version == trained["version"] and folded.behaviour is not None
    pipeline.rebuild_user(learning, newcomer)
    rebuilt = UserInterest.from_source(
        learning.engine.get_versioned(learning.settings.interests_alias, newcomer)[0])
    assert rebuilt.behaviour is not None
    assert folded.behaviour.vector_sum == pytest.approx(rebuilt.behaviour.vector_sum, abs=1e-9)


def test_cold_documents_get_behaviour_vectors_from_their_text(learning: Services) -> None:
    mapped = Services(replace(learning.settings, behaviour_text_map=True))
    run = uid("cold")
    ids = [f"{run}-{i}" for i in range(6)]
    docs = [{"id": d, "title": f"{'garden' if i < 3 else 'kitchen'} tool {i}",
             "tags": ["garden" if i < 3 else "kitchen"]} for i, d in enumerate(ids)]
    docs.append({"id": f"{run}-cold", "title": "garden rake", "tags": ["garden"]})
    assert not pipeline.index_documents(mapped, docs, refresh=True).errors
    events = [event(f"{run}-u{u}", d, "like", T0 + u) for u in range(6)
              for d in (ids[:3] if u < 3 else ids[3:])]
    assert not pipeline.ingest_events(mapped, events).errors
    trained = behaviour.train(mapped)
    assert trained["trained"] and trained["from_text"] > 0
    # Nobody touched the rake: its vector comes from its text, in this run's space, as
    # does a document indexed after the run.
    late = {"id": f"{run}-late", "title": "kitchen knife", "tags": ["kitchen"]}
    assert not pipeline.index_documents(mapped, [late], refresh=True).errors
    found = mapped.engine.mget_sources(mapped.settings.docs_alias,
                                       [f"{run}-cold", f"{run}-late"])
    doubt = np.sqrt(1 - mapped.settings.behaviour_text_map_confidence ** 2)
    for source in found.values():
        assert source["behaviour_version"] == trained["version"]
        assert len(source["behaviour"]) == mapped.settings.behaviour_dims
        assert np.linalg.norm(source["behaviour"]) == pytest.approx(1.0, abs=1e-4)
        # Trusted less than a learned vector, whose last dimension is 0.
        assert source["behaviour"][-1] == pytest.approx(doubt, abs=1e-5)


def test_popularity_writes_are_rationed_by_change_and_budget(learning: Services) -> None:
    """One flush writes at most its budget, largest changes first; a change of the ranking
    term within the tolerance is not written (the exact value stays in Redis)."""
    from plugin.indices import setup_indices

    mine = Services(replace(learning.settings, popularity_half_life_s=0.0,
                            index_prefix=learning.settings.index_prefix + "-ration",
                            popularity_flush_max_docs=2, popularity_tolerance=0.01))
    setup_indices(mine.engine, mine.settings, mine.embedder.dims)
    try:
        ids = [uid("ration") for _ in range(4)]
        assert not pipeline.index_documents(mine, [{"id": d, "title": f"rationed {d}"}
                                                   for d in ids], refresh=True).errors
        likes = dict(zip(ids, (60, 10, 2, 1), strict=True))
        events = [event(f"u{n}", d, "like", T0 + n) for d, k in likes.items() for n in range(k)]
        assert not pipeline.ingest_events(mine, events).errors
        like = mine.settings.event_weights["like"]

        assert popularity.flush(mine, refresh=True) == 2
        assert stored_popularity(mine, ids) == {ids[0]: pytest.approx(60 * like),
                                                ids[1]: pytest.approx(10 * like),
                                                ids[2]: None, ids[3]: None}
        assert popularity.flush(mine, refresh=True) == 2
        assert stored_popularity(mine, ids[2:]) == {ids[2]: pytest.approx(2 * like),
                                                    ids[3]: pytest.approx(like)}
        assert popularity.flush(mine, refresh=True) == 0  # nothing left

        # One more like on the popular one moves log10(1 + p) by less than 0.01: not written.
        assert not pipeline.ingest_events(mine, [event("u-late", ids[0], "like", T0 + 99)]).errors
        assert popularity.flush(mine, refresh=True) == 0
        assert stored_popularity(mine, ids[:1]) == {ids[0]: pytest.approx(60 * like)}
        assert popularity.values(mine, ids[:1]) == {ids[0]: pytest.approx(61 * like)}
        # Ten more do: the value written is the exact one.
        assert not pipeline.ingest_events(mine, [event(f"u-more{n}", ids[0], "like", T0 + 100)
                                                 for n in range(10)]).errors
        assert popularity.flush(mine, refresh=True) == 1
        assert stored_popularity(mine, ids[:1]) == {ids[0]: pytest.approx(71 * like)}
    finally:
        mine.engine.client.indices.delete(index=f"{mine.settings.index_prefix}-*")


@pytest.fixture(scope="module")
def many_matches(learning: Services) -> dict[str, Any]:
    """120 documents that all match 'gadget'; one user who
    liked a few of them; popularity on some."""
    run = uid("cliff")
    topics = ["kitchen", "garden", "music", "travel", "office", "sport"]
    docs = [{"id": f"{run}-{i}", "title": f"{topics[i % 6]} gadget model {i}",
             "tags": [topics[i % 6]], "body": "a gadget " * (1 + i % 4)} for i in range(120)]
    assert not pipeline.index_documents(learning, docs, refresh=True).errors
    user = f"{run}-user"
    events = [event(user, f"{run}-{i}", "like", T0 + i) for i in (0, 6, 12)]
    events += [event(f"{run}-crowd{i}", f"{run}-{i % 30}", "click", T0 + i) for i in range(60)]
    assert not pipeline.ingest_events(learning, events).errors
    popularity.flush(learning, refresh=True)
    return {"user": user, "count": len(docs)}


def test_no_document_loses_a_term_outside_a_top_k(learning: Services,
                                                  many_matches: dict[str, Any]) -> None:
    weights = BlendWeights(bm25=1.0, query=0.5, interest_long=1.0)
    result = search(learning, SearchParams("gadget", user_id=many_matches["user"], size=120,
                                           strategy="knn_linear", weights=weights,
                                           explain=True, use_cache=False))
    assert result.personalized and len(result.hits) == many_matches["count"]
    for hit in result.hits:  # all 120, not only the 5 nearest of each vector
        c = hit["components"]
        # The user's own likes are held neutral (seen share 0 here): no term of their own.
        personal = 0.0 if c["seen"] else c["interest_long"]
        assert c["final"] == pytest.approx(c["bm25"] + 0.5 * c["query"] + personal,
                                           abs=2e-3), hit["id"]


def test_script_score_and_knn_linear_rank_alike(learning: Services,
                                                many_matches: dict[str, Any]) -> None:
    strategies = available_strategies(learning)
    if not {"script_score", "knn_linear"} <= set(strategies):
        pytest.skip(f"{learning.engine.kind.value} {learning.engine.version} has no Painless")
    weights = BlendWeights(1.0, 0.5, 0.5, 1.0, 0.5, 0.0)
    orders = {}
    for strategy in ("script_score", "knn_linear"):
        hits = search(learning, SearchParams("gadget", user_id=many_matches["user"], size=100,
                                             strategy=strategy, weights=weights)).hits
        orders[strategy] = [h["id"] for h in hits]
    assert mean_kendall_tau([orders["script_score"]], [orders["knn_linear"]]) >= 0.9


def test_an_ids_only_search_ranks_alike_without_fetching_sources(
        learning: Services, many_matches: dict[str, Any]) -> None:
    for strategy in available_strategies(learning):
        params = SearchParams("gadget", user_id=many_matches["user"], size=50,
                              strategy=strategy, use_cache=False)
        full = search(learning, params)
        bare = search(learning, replace(params, ids_only=True))
        assert [h["id"] for h in bare.hits] == [h["id"] for h in full.hits], strategy
        # Named from the doc_id doc values: no stored field (not even _id) is read.
        assert bare.request["stored_fields"] == "_none_"
        assert all(h["title"] is None for h in bare.hits)
        assert all(h["title"] for h in full.hits)


def test_a_query_cached_by_the_linear_retriever_still_gets_its_best_bm25(
        learning: Services, many_matches: dict[str, Any]) -> None:
    """The linear retriever needs no best BM25 (its min-max scales BM25), so it caches the
    query's vector without one; a strategy that divides by it fetches it then."""
    if "linear_retriever" not in available_strategies(learning):
        pytest.skip(f"{learning.engine.kind.value} {learning.engine.version} has no linear "
                    "retriever")
    query = f"gadget {uid('unmatched')}"
    params = SearchParams(query, user_id=many_matches["user"], size=20, strategy="knn_linear",
                          explain=True, use_cache=False)
    fresh = search(learning, params).hits
    search(learning, replace(params, strategy="linear_retriever", explain=False,
                             use_cache=True))
    cached = search(learning, replace(params, use_cache=True)).hits
    assert [h["id"] for h in cached] == [h["id"] for h in fresh]
    assert [h["components"]["bm25"] for h in cached] == [h["components"]["bm25"] for h in fresh]
    assert 0 < max(h["components"]["bm25"] for h in cached) <= 1.0  # divided by the best


def test_tune_fits_the_deployments_own_log(learning: Services, tmp_path: Any) -> None:
    if learning.engine.kind.value != "elasticsearch" or learning.engine.version_tuple < (9, 0):
        pytest.skip("one engine is enough for the tuning loop (it only issues searches)")
    from plugin.config import load_ranking
    from plugin.evaluation import data, tune

    split, movies = data.split(users=60)
    wanted = {e["doc_id"] for e in split.train} | {q.movie_id for q in split.test}
    catalog = [m for m in movies if m["id"] in wanted][:1500]
    assert not pipeline.index_documents(learning, catalog, refresh=True).errors
    known = {m["id"] for m in catalog}
    log = [e for e in split.train if e["doc_id"] in known]
    log += [{"event_id": f"later-{q.user_id}-{q.movie_id}", "user_id": q.user_id,
             "doc_id": q.movie_id, "type": "like", "timestamp": q.timestamp}
            for q in split.validation + split.test if q.movie_id in known]
    for start in range(0, len(log), 1000):
        assert not pipeline.ingest_events(learning, log[start:start + 1000]).errors
    result = tune.tune(learning, holdout_share=0.15, max_queries=120, progress=lambda _: None)
    report = result["report"]
    assert report["queries"]["fit"] >= 20 and report["queries"]["check"] >= 20
    for entry in report["ndcg@10"].values():
        low, high = entry["ci95"]
        assert 0 <= low <= entry["mean"] <= high <= 1
    path = tmp_path / "ranking.json"
    tune.write(result, path)
    assert load_ranking(path)["weights"][report["strategy"]] == \
        result["ranking"]["weights"][report["strategy"]]


def test_workers_train_behaviour_on_their_own(learning: Services) -> None:
    """A real worker process: once enough events are applied it trains a new version and
    re-folds the users, with no operator and no beat."""
    from plugin.celery_app import make_celery

    settings = replace(learning.settings, behaviour_first_training_events=20,
                       behaviour_training_delay_s=1.0, behaviour_training_min_interval_s=0.0)
    before = behaviour.current_version(learning)
    # The log has "doubled" since the module's last explicit run.
    learning.redis.delete(settings.redis_key("behaviour", "events-at-training"))
    run = uid("auto")
    ids = [f"{run}-{i}" for i in range(6)]
    assert not pipeline.index_documents(learning, [
        {"id": d, "title": f"auto item {i}", "tags": ["auto"]} for i, d in enumerate(ids)],
        refresh=True).errors
    users = [f"{run}-u{u}" for u in range(8)]
    events = [event(u, d, "like", T0 + n) for n, (u, d) in enumerate(
        (u, d) for u in users for d in (ids[:3] if u[-1] in "0123" else ids[3:]))]
    worker = WorkerProcess(settings, f"auto-{uuid.uuid4().hex[:4]}")
    try:
        worker.wait_ready()
        celery = make_celery(settings)
        report = celery.send_task("es_interest.ingest_events", args=[events]).get(timeout=120)
        assert len(report["done"]) == len(events)
        deadline = time.monotonic() + 180
        while True:
            version = behaviour.current_version(learning)
            found = learning.engine.mget_versioned(settings.interests_alias, users)
            folded = {u: s.get("behaviour_version") for u, (s, _, _) in found.items()}
            if version != before and version is not None and set(folded.values()) == {version}:
                break
            assert time.monotonic() < deadline, (before, version, folded, worker.log_path)
            time.sleep(1)
    finally:
        worker.stop()


def test_offline_blends_share_every_term_search_but_the_behaviour_terms(
        learning: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    run = uid("terms")
    ids = indexed_items(learning, run, "nebula", 6)
    user = UserVectors(long=learning.embedder.encode(["nebula item 2"])[0].tolist(),
                       behaviour=[1.0] + [0.0] * 7)
    query = Query("someone", ids[0], "nebula", int(T0))
    asked: list[int] = []
    real_msearch = learning.engine.msearch

    def counted(index: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        asked.append(len(bodies))
        return real_msearch(index, bodies)

    monkeypatch.setattr(learning.engine, "msearch", counted)
    shared = TermStore()
    first = OfflineBlend(1000, 100, shared=shared).terms(learning, "knn_linear", query,
                                                        "dynamic", user)
    # BM25, popularity, the query vector, the user's content and behaviour vectors.
    assert sum(asked) == 5
    # The words recall all six (the query vector may recall other tests' documents too).
    assert set(ids) <= set(first.ids)
    # Another blend on the same deployment (another behaviour candidate's) asks the
    # behaviour term alone again, and gets the same terms.
    second = OfflineBlend(1000, 100, shared=shared).terms(learning, "knn_linear", query,
                                                         "dynamic", user)
    assert asked[1:] == [1]
    assert second.ids == first.ids
    assert np.array_equal(second.scores, first.scores)
    # Another short-term vector: its own search, the rest kept.
    moved = replace(user, short=learning.embedder.encode(["nebula item 4"])[0].tolist())
    OfflineBlend(1000, 100, shared=shared).terms(learning, "knn_linear", query, "dynamic",
                                                 moved)
    assert asked[2:] == [2]  # interest_short and behaviour


def test_user_terms_scored_here_agree_with_the_engines_knn(learning: Services) -> None:
    """``LocalVectors``: the user terms' kNN searches scored in this process find what the
    engine's find (the query's matches, less the held-neutral document), scored alike."""
    run = uid("local")
    ids = indexed_items(learning, run, "quasar", 12)
    rng = np.random.default_rng(6)
    learning.engine.bulk([
        {"_op_type": "update", "_index": learning.settings.docs_alias, "_id": d,
         "doc": {"behaviour": (v / np.linalg.norm(v)).round(6).tolist(),
                 "behaviour_version": run}}
        for d, v in zip(ids[:8], rng.normal(size=(8, 8)), strict=True)]).raise_if_refused(
        "behaviour vectors not written")
    learning.engine.refresh(learning.settings.docs_alias)
    local = LocalVectors.of(fetch_doc_vectors(learning, ids, fresh=True))
    user = UserVectors(long=learning.embedder.encode(["quasar item 3"])[0].tolist(),
                       behaviour=rng.normal(size=8).tolist(), seen=(ids[1],))
    query = Query("someone", ids[0], "quasar", int(T0))
    fetched = OfflineBlend(1000, 100).terms(learning, "knn_linear", query, "dynamic", user)
    here = OfflineBlend(1000, 100, local=local).terms(learning, "knn_linear", query, "dynamic",
                                                      user)

    def scored(terms: QueryTerms, name: str) -> dict[str, float]:
        column = TERMS.index(name)
        return {d: float(terms.scores[i, column]) for i, d in enumerate(terms.ids)
                if terms.present[i, column]}

    for name, expected in (("interest_long", set(ids) - {ids[1]}),
                           ("behaviour", set(ids[:8]) - {ids[1]})):
        engine_scores, local_scores = scored(fetched, name), scored(here, name)
        assert set(local_scores) == set(engine_scores) == expected
        assert all(abs(local_scores[d] - engine_scores[d]) < 1e-5 for d in expected)
