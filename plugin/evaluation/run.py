"""The evaluation protocol on the real engines, pipeline and search layer.

1. Index the movies (embedded once) into each engine.
2. Half-lives: fold each user's training events offline (the same pure functions the workers
   use) for several (long, short) half-lives; keep the best on the validation queries.
3. Replay the training events, in time order, through the real event pipeline with those
   half-lives; check that its vectors equal the offline fold.
4. Tune the blend weights of each method on the validation queries only.
5. Score every method on the test queries: NDCG@10, MRR, Recall@100, 95% bootstrap intervals,
   paired tests against the dynamic profile.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from plugin import pipeline
from plugin.config import LOCAL_ENGINE_URLS, REPO_ROOT, Settings, load_settings
from plugin.evaluation import data, metrics
from plugin.evaluation.report import write_report
from plugin.indices import setup_indices
from plugin.interest import DocVector, UserInterest, interest_vector
from plugin.pipeline.users import contributions
from plugin.progress import progress as progress_bar
from plugin.search import (
    BlendWeights,
    SearchParams,
    UserVectors,
    available_strategies,
    search,
)
from plugin.services import Services

DAY = 86400.0
HALF_LIVES = [(7.0, 1.0), (30.0, 1.0), (90.0, 3.0), (365.0, 7.0), (3650.0, 30.0)]
TUNING_QUERIES = 400
SIZE = 100


@dataclass
class Method:
    name: str
    weights: BlendWeights
    profile: str | None  # None, "static" or "dynamic"
    strategy: str = "knn_linear"


def _catalog(split: data.Split, movies: list[dict[str, Any]], quick: bool,
             seed: int = 5) -> list[dict[str, Any]]:
    if not quick:
        return movies
    wanted = {e["doc_id"] for e in split.train} | {q.movie_id for q in split.validation}
    wanted |= {q.movie_id for q in split.test}
    rest = [m for m in movies if m["id"] not in wanted]
    rng = np.random.default_rng(seed)
    extra = {rest[i]["id"] for i in rng.choice(len(rest), size=min(1500, len(rest)),
                                               replace=False)}
    return [m for m in movies if m["id"] in wanted | extra]


def _rank(hits: Sequence[dict[str, Any]], movie_id: str) -> int | None:
    for position, hit in enumerate(hits, 1):
        if hit["id"] == movie_id:
            return position
    return None


class Evaluator:
    def __init__(self, services: Services, profiles: dict[str, dict[str, UserVectors]]) -> None:
        self.services, self.profiles = services, profiles

    def ranks(self, method: Method, queries: Sequence[data.Query],
              label: str = "") -> list[int | None]:
        out = []
        for q in progress_bar(queries, desc=label or method.name, unit="query", leave=False):
            vectors = (self.profiles[method.profile].get(q.user_id, UserVectors())
                       if method.profile else None)
            result = search(self.services, SearchParams(
                q.text, size=SIZE, weights=method.weights, strategy=method.strategy,
                vectors=vectors if vectors is not None else None))
            out.append(_rank(result.hits, q.movie_id))
        return out

    def ndcg(self, method: Method, queries: Sequence[data.Query]) -> float:
        return float(metrics.per_query(self.ranks(method, queries, "tuning"))["ndcg@10"].mean())


def offline_profiles(split: data.Split, doc_vectors: dict[str, Any],
                     text_vectors: dict[str, list[float]], half_lives: tuple[float, float]
                     ) -> dict[str, UserVectors]:
    """Each user's long/short vectors from their training events: the workers' own fold."""
    out = {}
    long_s, short_s = half_lives[0] * DAY, half_lives[1] * DAY
    for user, events in split.static_events.items():
        state: UserInterest | None = None
        for e in events:
            if e["doc_id"] not in doc_vectors:
                continue
            items = contributions(_stored(e, text_vectors), doc_vectors)
            state = state or UserInterest.empty(user, len(items[0].embedding))  # type: ignore[arg-type]
            state = state.apply_event(e["event_id"], items, long_s, short_s, 0.0) or state
        if state is not None:
            long, short = interest_vector(state.long), interest_vector(state.short)
            out[user] = UserVectors(None if long is None else long.tolist(),
                                    None if short is None else short.tolist())
    return out


def static_profiles(split: data.Split, doc_vectors: dict[str, Any]) -> dict[str, UserVectors]:
    """The mean of the user's whole training history, signed by feedback, no decay."""
    out = {}
    for user, events in split.static_events.items():
        vecs = [np.sign(e.get("weight", 1.0)) * np.asarray(doc_vectors[e["doc_id"]].embedding)
                for e in events if e["doc_id"] in doc_vectors]
        if vecs:
            mean = np.mean(vecs, axis=0)
            norm = float(np.linalg.norm(mean))
            if norm > 0:
                out[user] = UserVectors((mean / norm).tolist(), None)
    return out


def _stored(event: dict[str, Any], text_vectors: dict[str, list[float]]) -> dict[str, Any]:
    """An event as the pipeline stores it (weight resolved, time in ms, text embedded)."""
    weight = event.get("weight", 1.0 if event["type"] == "comment" else 0.0)
    stored = {**event, "weight": weight, "timestamp": int(event["timestamp"]) * 1000}
    if event.get("text"):
        stored["text_embedding"] = text_vectors[event["text"]]
    return stored


def _services(engine: str, half_lives: tuple[float, float], prefix: str) -> Services:
    base = load_settings()
    settings: Settings = replace(base, engine_url=LOCAL_ENGINE_URLS[engine],
                                 index_prefix=f"{prefix}-{engine}",
                                 redis_url="redis://127.0.0.1:6379/8",
                                 half_life_long_s=half_lives[0] * DAY,
                                 half_life_short_s=half_lives[1] * DAY)
    return Services(settings)


def run(quick: bool, users: int | None, engines: Sequence[str], out_dir: Path,
        progress: Callable[[str], None] = print) -> dict[str, Any]:
    started = time.time()
    users = users if users is not None else (40 if quick else None)
    split, movies = data.split(users=users)
    catalog = _catalog(split, movies, quick)
    progress(f"{len(split.static_events)} users, {len(split.train)} training events, "
             f"{len(split.validation)} validation and {len(split.test)} test queries, "
             f"{len(catalog)} movies")
    prefix = f"eval-{uuid.uuid4().hex[:6]}"
    first = _services(engines[0], HALF_LIVES[1], prefix)
    first.redis.flushdb()
    embedder = first.embedder
    texts = [" | ".join([m["title"], ", ".join(m["tags"])]) for m in catalog]
    progress("embedding movies once for every engine")
    vectors = embedder.encode(texts)
    docs = [{**m, "embedding": v.tolist()} for m, v in zip(catalog, vectors, strict=True)]
    doc_vectors = {m["id"]: DocVector(v.tolist(), tuple(m["tags"]))
                   for m, v in zip(catalog, vectors, strict=True)}
    tag_texts = sorted({e["text"] for e in split.train if e.get("text")})
    text_vectors = dict(zip(tag_texts, (v.tolist() for v in embedder.encode(tag_texts)),
                            strict=True))
    train = [e for e in split.train if e["doc_id"] in doc_vectors]

    # 2. half-lives, on validation only (first engine, knn_linear, default weights)
    setup_indices(first.engine, first.settings, embedder.dims)
    _index(first, docs)
    rng = np.random.default_rng(11)
    tuning = [split.validation[i] for i in sorted(rng.choice(
        len(split.validation), size=min(TUNING_QUERIES, len(split.validation)), replace=False))]
    ablation = []
    for hl in HALF_LIVES:
        profiles = {"dynamic": offline_profiles(split, doc_vectors, text_vectors, hl)}
        score = Evaluator(first, profiles).ndcg(
            Method("dynamic", BlendWeights(), "dynamic"), tuning)
        ablation.append({"long_days": hl[0], "short_days": hl[1], "val_ndcg@10": score})
        progress(f"half-lives {hl}: validation NDCG@10 {score:.4f}")
    best = max(ablation, key=lambda a: a["val_ndcg@10"])
    half_lives = (best["long_days"], best["short_days"])

    static = static_profiles(split, doc_vectors)
    results: dict[str, Any] = {"engines": {}, "ablation": ablation, "half_lives": half_lives}
    for engine in engines:
        services = _services(engine, half_lives, prefix)
        if engine != engines[0]:
            setup_indices(services.engine, services.settings, embedder.dims)
            _index(services, docs)
        # 3. the real pipeline, in time order
        for i in progress_bar(range(0, len(train), 1000), desc=f"replaying events ({engine})",
                      unit="batch", leave=False):
            report = pipeline.ingest_events(services, train[i:i + 1000])
            if report.errors:
                raise RuntimeError(f"training events rejected: {report.errors[:3]}")
        dynamic = _pipeline_profiles(services, list(split.static_events))
        offline = offline_profiles(split, doc_vectors, text_vectors, half_lives)
        drift = max((float(np.max(np.abs(np.asarray(dynamic[u].long) - np.asarray(v.long))))
                     for u, v in offline.items() if v.long and u in dynamic
                     and dynamic[u].long), default=0.0)
        progress(f"{engine}: pipeline vs offline fold, max |difference| {drift:.2e}")
        evaluator = Evaluator(services, {"static": static, "dynamic": dynamic})
        methods = _tune(evaluator, tuning, available_strategies(services), progress)
        results["engines"][engine] = _score(evaluator, methods, split.test, progress)
        results["engines"][engine]["pipeline_vs_offline_max_abs"] = drift
        results["engines"][engine]["strategies"] = available_strategies(services)
        results["engines"][engine]["engine"] = (f"{services.engine.kind.value} "
                                                f"{services.engine.version}")
        services.engine.client.indices.delete(index=f"{services.settings.index_prefix}-*")
    results.update({
        "quick": quick, "users": len(split.static_events), "train_events": len(train),
        "validation_queries": len(split.validation), "tuning_queries": len(tuning),
        "test_queries": len(split.test), "movies": len(catalog),
        "commit": _commit(), "seconds": round(time.time() - started, 1),
        "drift_user": _drift(split, doc_vectors, text_vectors, half_lives),
    })
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(results, indent=2))
    write_report(results, out_dir)
    first.redis.flushdb()
    return results


def _index(services: Services, docs: list[dict[str, Any]]) -> None:
    for i in progress_bar(range(0, len(docs), 1000), desc="indexing movies", unit="batch",
                          leave=False):
        report = pipeline.index_documents(services, docs[i:i + 1000])
        if report.errors:
            raise RuntimeError(f"movies rejected: {report.errors[:3]}")
    services.engine.client.indices.refresh(index=services.settings.docs_alias)


def _pipeline_profiles(services: Services, users: list[str]) -> dict[str, UserVectors]:
    found = services.engine.mget_versioned(services.settings.interests_alias, users)
    out = {}
    for user, (source, _, _) in found.items():
        state = UserInterest.from_source(source)
        long, short = interest_vector(state.long), interest_vector(state.short)
        out[user] = UserVectors(None if long is None else long.tolist(),
                                None if short is None else short.tolist())
    return out


def _tune(evaluator: Evaluator, tuning: list[data.Query], strategies: list[str],
          progress: Callable[[str], None]) -> list[Method]:
    """Weights chosen on validation: the baselines and profiles with knn_linear (every
    engine has it), then the dynamic profile's weights again for each other strategy, whose
    terms are calibrated differently."""
    def best(candidates: list[Method]) -> Method:
        scored = [(evaluator.ndcg(m, tuning), i, m) for i, m in enumerate(candidates)]
        return max(scored)[2]

    hybrid = best([Method("hybrid", BlendWeights(1.0, b, 0.0, 0.0), None)
                   for b in (0.5, 1.0, 2.0, 4.0)])
    a, b = hybrid.weights.bm25, hybrid.weights.query
    static = best([Method("static profile", BlendWeights(a, b, c, 0.0), "static")
                   for c in (0.5, 1.0, 2.0, 4.0, 8.0)])
    dynamic = best([Method("dynamic profile", BlendWeights(a, b, c, d), "dynamic")
                    for c in (0.5, 1.0, 2.0, 4.0, 8.0) for d in (0.0, 0.5, 2.0)])
    progress(f"tuned on validation: hybrid {hybrid.weights}, static {static.weights}, "
             f"dynamic {dynamic.weights}")
    methods = [Method("BM25", BlendWeights(1.0, 0.0, 0.0, 0.0), None),
               Method("kNN on the query", BlendWeights(0.0, 1.0, 0.0, 0.0), None),
               hybrid, static, dynamic]
    for strategy in strategies:
        if strategy == "knn_linear":
            continue
        tuned = best([Method(f"dynamic profile ({strategy})", BlendWeights(a, b, c, d),
                             "dynamic", strategy)
                      for c in (0.5, 1.0, 2.0, 4.0, 8.0) for d in (0.0, 0.5, 2.0)])
        progress(f"tuned on validation: dynamic with {strategy} {tuned.weights}")
        methods.append(tuned)
    return methods


def _score(evaluator: Evaluator, methods: list[Method], test: list[data.Query],
           progress: Callable[[str], None]) -> dict[str, Any]:
    per_method = {m.name: metrics.per_query(evaluator.ranks(m, test)) for m in methods}
    table = {}
    for m in methods:
        values = per_method[m.name]
        table[m.name] = {"strategy": m.strategy, "weights": m.weights.__dict__,
                         **{k: {"mean": float(v.mean()), "ci95": metrics.bootstrap_ci(v)}
                            for k, v in values.items()}}
        progress(f"  {m.name}: NDCG@10 {values['ndcg@10'].mean():.4f}")
    dyn = per_method["dynamic profile"]["ndcg@10"]
    non_personal = ["BM25", "kNN on the query", "hybrid"]
    best_np = max(non_personal, key=lambda n: per_method[n]["ndcg@10"].mean())
    tests = {name: metrics.paired_test(dyn, per_method[name]["ndcg@10"])
             for name in [*non_personal, "static profile"]}
    # The strategies, best first by the dynamic profile's test NDCG@10: what `auto` should pick.
    by_strategy = {m.strategy: float(per_method[m.name]["ndcg@10"].mean())
                   for m in methods if m.profile == "dynamic"}
    return {"methods": table, "tests_vs_dynamic": tests, "best_non_personalized": best_np,
            "strategy_ranking": sorted(by_strategy, key=lambda k: -by_strategy[k]),
            "relative_gain_vs_best_non_personalized":
                float(dyn.mean() / per_method[best_np]["ndcg@10"].mean() - 1.0)
                if per_method[best_np]["ndcg@10"].mean() > 0 else None}


def _drift(split: data.Split, doc_vectors: dict[str, Any], text_vectors: dict[str, list[float]],
           half_lives: tuple[float, float]) -> dict[str, Any]:
    """One user's interest over time: cosine of the vectors at each event to the final ones."""
    user = max(split.static_events, key=lambda u: len(split.static_events[u]))
    long_s, short_s = half_lives[0] * DAY, half_lives[1] * DAY
    state: UserInterest | None = None
    series = []
    for e in split.static_events[user]:
        if e["doc_id"] not in doc_vectors:
            continue
        items = contributions(_stored(e, text_vectors), doc_vectors)
        state = state or UserInterest.empty(user, len(items[0].embedding))  # type: ignore[arg-type]
        state = state.apply_event(e["event_id"], items, long_s, short_s, 0.0) or state
        series.append((e["timestamp"], interest_vector(state.long), interest_vector(state.short)))
    final = series[-1][1]
    points: dict[str, list[float | None]] = defaultdict(list)
    for t, long, short in series:
        points["t"].append(float(t))
        for name, v in (("long", long), ("short", short)):
            points[name].append(None if v is None or final is None
                                else float(np.dot(v, final)))
    return {"user": user, "events": len(series), **points}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
