"""The evaluation protocol on the real engines, pipeline and search layer.

1. Index the movies (embedded once) into each engine.
2. Half-lives: fold each user's training events offline (the same pure functions the workers
   use) for several (long, short) half-lives; keep the best on the validation queries.
3. Replay the training events, in time order, through the real event pipeline (users'
   interests and documents' popularity); check that its vectors equal the offline fold; pick
   popularity's half-life on validation; train the behaviour vectors and re-fold the users,
   as `es-interest train` does.
4. Tune each strategy's blend weights on validation queries only, term by term (coordinate
   ascent): popularity and the query vector first (the non-personalized default), then the
   user terms on top of them, so the personalized default can only add to it. The first
   engine tunes; the others run the same weights, as the product ships one file.
5. Score every method on the test queries of each protocol: NDCG@10, MRR, Recall@100, 95%
   bootstrap intervals, paired tests. The full run writes the chosen configuration to
   plugin/ranking.json: what /search, the proxy and the workers then use.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from plugin import pipeline
from plugin.config import (
    BLEND_STRATEGIES,
    LOCAL_ENGINE_URLS,
    REPO_ROOT,
    SHIPPED_RANKING,
    WEIGHT_NAMES,
    Settings,
    load_settings,
)
from plugin.evaluation import data, metrics
from plugin.evaluation.report import write_report
from plugin.indices import setup_indices
from plugin.interest import DocVector, UserInterest, fold_events, interest_vector
from plugin.pipeline import behaviour, popularity
from plugin.progress import progress as progress_bar
from plugin.search import (
    BlendWeights,
    SearchParams,
    UserVectors,
    available_strategies,
    search,
    vectors_of,
)
from plugin.services import Services

DAY = 86400.0
HALF_LIVES = [(30.0, 1.0), (365.0, 7.0), (3650.0, 30.0)]
POPULARITY_HALF_LIVES = [0.0, 90.0, 365.0]  # days; 0 = a weighted count
GRID: dict[str, tuple[float, ...]] = {
    "popularity": (0.0, 0.5, 1.0, 2.0),
    "query": (0.0, 0.5, 1.0),
    "behaviour": (0.0, 0.5, 1.0, 2.0, 4.0),
    "interest_long": (0.0, 0.5, 1.0, 2.0),
    "interest_short": (0.0, 0.5),
    "ambiguity": (0.0, 0.5, 1.0, 2.0),
}
# What a ranking file holds per strategy: the terms' weights and the ambiguity exponent.
TUNING_QUERIES = {"full": 240, "quick": 100}
SIZE = 100
DEFAULT = "personalized default"
NON_PERSONALIZED = "non-personalized default"


@dataclass
class Method:
    name: str
    weights: BlendWeights | None  # None: the configured (shipped) weights
    profile: str | None  # None, "static" or "dynamic"
    strategy: str = "knn_linear"
    keep_hits: bool = False
    hits: list[list[str]] = field(default_factory=list, repr=False)


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


@dataclass(frozen=True)
class Evaluator:
    """Runs a method's queries on one deployment (``services``) with the given profiles."""

    services: Services
    profiles: dict[str, dict[str, UserVectors]]

    def using(self, services: Services) -> Evaluator:
        """The same profiles on another configuration (other weights, another half-life)."""
        return replace(self, services=services)

    def ranks(self, method: Method, queries: Sequence[data.Query],
              label: str = "") -> list[int | None]:
        out = []
        for q in progress_bar(queries, desc=label or method.name, unit="query", leave=False):
            vectors = (self.profiles[method.profile].get(q.user_id, UserVectors())
                       if method.profile else None)
            result = search(self.services, SearchParams(
                q.text, size=SIZE, weights=method.weights, strategy=method.strategy,
                vectors=vectors))
            out.append(_rank(result.hits, q.movie_id))
            if method.keep_hits:
                method.hits.append([h["id"] for h in result.hits])
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
        state, _ = fold_events(None, user, [_stored(e, text_vectors) for e in events
                                            if e["doc_id"] in doc_vectors],
                               doc_vectors, long_s, short_s, 0.0)
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


def _services(engine: str, half_lives: tuple[float, float], prefix: str,
              popularity_days: float = 0.0) -> Services:
    base = load_settings()
    settings: Settings = replace(base, engine_url=LOCAL_ENGINE_URLS[engine],
                                 index_prefix=f"{prefix}-{engine}",
                                 redis_url="redis://127.0.0.1:6379/8",
                                 half_life_long_s=half_lives[0] * DAY,
                                 half_life_short_s=half_lives[1] * DAY,
                                 popularity_half_life_s=popularity_days * DAY)
    return Services(settings)


@dataclass(frozen=True)
class Corpus:
    """The split, the movies it needs, and their vectors (embedded once for every engine)."""

    split: data.Split
    catalog: list[dict[str, Any]]
    docs: list[dict[str, Any]]  # the documents to index, with their embeddings
    doc_vectors: dict[str, DocVector]
    text_vectors: dict[str, list[float]]  # the tags users typed, embedded
    train: list[dict[str, Any]]  # training events on indexed movies


def run(quick: bool, users: int | None, engines: Sequence[str], out_dir: Path,
        progress: Callable[[str], None] = print,
        ranking_out: Path | None = None) -> dict[str, Any]:
    """The whole protocol; ``ranking_out``: where the chosen configuration is written
    (the full run: the shipped plugin/ranking.json)."""
    started = time.time()
    prefix = f"eval-{uuid.uuid4().hex[:6]}"
    first = _services(engines[0], HALF_LIVES[1], prefix)
    first.redis.flushdb()
    corpus = _corpus(first, quick, users if users is not None else (40 if quick else None),
                     progress)
    setup_indices(first.engine, first.settings, first.embedder.dims)
    _index(first, corpus.docs)
    tuning = _tuning_queries(corpus.split, quick)
    half_lives, ablation = _half_lives(first, corpus, tuning, progress)
    results: dict[str, Any] = {"engines": {}, "ablation": ablation, "half_lives": half_lives}
    chosen: dict[str, tuple[BlendWeights, BlendWeights]] = {}
    static = static_profiles(corpus.split, corpus.doc_vectors)
    popularity_days = 0.0
    for engine in engines:
        services = _services(engine, half_lives, prefix, popularity_days)
        if engine != engines[0]:
            setup_indices(services.engine, services.settings, first.embedder.dims)
            _index(services, corpus.docs)
        drift = _replay(services, engine, corpus, half_lives, progress)
        # The quick run measures each engine's default strategy only.
        strategies = available_strategies(services)[:1 if quick else None]
        if engine == engines[0]:
            popularity_days, results["popularity_ablation"] = _popularity_half_life(
                services, tuning, strategies[0], progress)
            services = _services(engine, half_lives, prefix, popularity_days)
        scored = _evaluate_engine(services, engine, corpus, static, tuning, strategies,
                                  chosen, progress)
        scored["pipeline_vs_offline_max_abs"] = drift
        results["engines"][engine] = scored
        services.engine.delete_indices(f"{services.settings.index_prefix}-*")
    split = corpus.split
    results.update({
        "quick": quick, "users": len(split.static_events), "train_events": len(corpus.train),
        "validation_queries": len(split.validation), "tuning_queries": len(tuning),
        "test_queries": len(split.test), "movies": len(corpus.catalog),
        "popularity_half_life_days": popularity_days,
        "commit": _commit(), "seconds": round(time.time() - started, 1),
        "drift_user": _drift(split, corpus.doc_vectors, corpus.text_vectors, half_lives),
    })
    results["ranking"] = _ranking(results, chosen)
    _write(results, out_dir, ranking_out)
    first.redis.flushdb()
    return results


def _corpus(services: Services, quick: bool, users: int | None,
            progress: Callable[[str], None]) -> Corpus:
    """1. The split (per user, in time) and the movies' and typed tags' embeddings."""
    split, movies = data.split(users=users, max_queries_per_user=3 if quick else 1)
    catalog = _catalog(split, movies, quick)
    progress(f"{len(split.static_events)} users, {len(split.train)} training events, "
             f"{len(split.validation)} validation and {len(split.test)} test queries, "
             f"{len(catalog)} movies")
    embedder = services.embedder
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
    return Corpus(split, catalog, docs, doc_vectors, text_vectors, train)


def _tuning_queries(split: data.Split, quick: bool) -> list[data.Query]:
    """The validation queries every tuning step scores (a fixed random subset)."""
    rng = np.random.default_rng(11)
    size = TUNING_QUERIES["quick" if quick else "full"]
    return [split.validation[i] for i in sorted(rng.choice(
        len(split.validation), size=min(size, len(split.validation)), replace=False))]


def _half_lives(services: Services, corpus: Corpus, tuning: list[data.Query],
                progress: Callable[[str], None]
                ) -> tuple[tuple[float, float], list[dict[str, Any]]]:
    """2. Half-lives, on validation only (first engine, knn_linear, content profile)."""
    ablation = []
    for hl in HALF_LIVES:
        profiles = {"dynamic": offline_profiles(corpus.split, corpus.doc_vectors,
                                                corpus.text_vectors, hl)}
        score = Evaluator(services, profiles).ndcg(
            Method("dynamic", BlendWeights(1.0, 1.0, 0.0, 1.0, 0.5), "dynamic"), tuning)
        ablation.append({"long_days": hl[0], "short_days": hl[1], "val_ndcg@10": score})
        progress(f"half-lives {hl}: validation NDCG@10 {score:.4f}")
    best = max(ablation, key=lambda a: a["val_ndcg@10"])
    return (best["long_days"], best["short_days"]), ablation


def _replay(services: Services, engine: str, corpus: Corpus, half_lives: tuple[float, float],
            progress: Callable[[str], None]) -> float:
    """3. The training events through the real pipeline, in time order; returns how far its
    user vectors are from the offline fold's (they should agree to float precision)."""
    train = corpus.train
    for i in progress_bar(range(0, len(train), 1000), desc=f"replaying events ({engine})",
                          unit="batch", leave=False):
        report = pipeline.ingest_events(services, train[i:i + 1000])
        if report.errors:
            raise RuntimeError(f"training events rejected: {report.errors[:3]}")
    content = _pipeline_profiles(services, list(corpus.split.static_events))
    offline = offline_profiles(corpus.split, corpus.doc_vectors, corpus.text_vectors,
                               half_lives)
    drift = max((float(np.max(np.abs(np.asarray(content[u].long) - np.asarray(v.long))))
                 for u, v in offline.items() if v.long and u in content
                 and content[u].long), default=0.0)
    progress(f"{engine}: pipeline vs offline fold, max |difference| {drift:.2e}")
    return drift


def _evaluate_engine(services: Services, engine: str, corpus: Corpus,
                     static: dict[str, UserVectors],
                     tuning: list[data.Query], strategies: list[str],
                     chosen: dict[str, tuple[BlendWeights, BlendWeights]],
                     progress: Callable[[str], None]) -> dict[str, Any]:
    """4. Popularity and behaviour from the log, weights tuned on validation (strategies not
    tuned yet; ``chosen`` grows), then every method on the test queries."""
    popularity.rebuild(services)
    trained = behaviour.train(services)
    progress(f"{engine}: behaviour vectors {trained}")
    evaluator = Evaluator(services, {
        "static": static,
        "dynamic": _pipeline_profiles(services, list(corpus.split.static_events))})
    chosen.update({s: _tune(evaluator, tuning, s, progress)
                   for s in strategies if s not in chosen})
    # From here the chosen weights are the configured ones: the defaults are measured
    # through the same path as /search (weights=None).
    evaluator = evaluator.using(Services(replace(
        services.settings,
        blend_weights={s: asdict(w[1]) for s, w in chosen.items()},
        blend_weights_without_behaviour={s: asdict(w[0]) for s, w in chosen.items()})))
    scored = _score(evaluator, chosen, strategies, corpus.split.test, progress)
    scored.update(strategies=strategies,
                  engine=f"{services.engine.kind.value} {services.engine.version}",
                  behaviour=trained)
    return scored


def _write(results: dict[str, Any], out_dir: Path, ranking_out: Path | None) -> None:
    """5. evaluation.json, the chosen ranking file, and the report with its plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(results, indent=2))
    (ranking_out or out_dir / "ranking.json").write_text(
        json.dumps(results["ranking"], indent=2) + "\n")
    write_report(results, out_dir)


def _ranking(results: dict[str, Any], chosen: dict[str, tuple[BlendWeights, BlendWeights]]
             ) -> dict[str, Any]:
    """The configuration the evaluation chose, in the ranking file's shape. A strategy the
    evaluated engines did not offer keeps the shipped file's weights."""
    shipped = json.loads(SHIPPED_RANKING.read_text())

    def table(name: str, index: int) -> dict[str, dict[str, float]]:
        return {s: ({t: float(getattr(chosen[s][index], t)) for t in WEIGHT_NAMES}
                    if s in chosen else shipped[name][s]) for s in BLEND_STRATEGIES}

    return {
        "chosen_by": f"`es-interest eval` on commit {results['commit']} "
                     f"({results['users']} MovieLens users, validation queries only)",
        "half_life_long_days": results["half_lives"][0],
        "half_life_short_days": results["half_lives"][1],
        "popularity_half_life_days": results["popularity_half_life_days"],
        "weights": table("weights", 1),
        "weights_without_behaviour": table("weights_without_behaviour", 0),
    }


def _index(services: Services, docs: list[dict[str, Any]]) -> None:
    for i in progress_bar(range(0, len(docs), 1000), desc="indexing movies", unit="batch",
                          leave=False):
        report = pipeline.index_documents(services, docs[i:i + 1000])
        if report.errors:
            raise RuntimeError(f"movies rejected: {report.errors[:3]}")
    services.engine.refresh(services.settings.docs_alias)


def _pipeline_profiles(services: Services, users: list[str]) -> dict[str, UserVectors]:
    found = services.engine.mget_versioned(services.settings.interests_alias, users)
    return {user: vectors_of(UserInterest.from_source(source))
            for user, (source, _, _) in found.items()}


def _popularity_half_life(services: Services, tuning: list[data.Query], strategy: str,
                          progress: Callable[[str], None]) -> tuple[float, list[dict[str, Any]]]:
    """Popularity's half-life: BM25 + popularity on validation, for each candidate."""
    ablation = []
    for days in POPULARITY_HALF_LIVES:
        candidate = Services(replace(services.settings, popularity_half_life_s=days * DAY))
        popularity.rebuild(candidate)
        evaluator = Evaluator(candidate, {})
        score = max(evaluator.ndcg(Method("pop", BlendWeights(1.0, popularity=p), None,
                                          strategy), tuning) for p in (0.5, 1.0, 2.0))
        ablation.append({"days": days, "val_ndcg@10": score})
        progress(f"popularity half-life {days:g} d: validation NDCG@10 {score:.4f}")
    return max(ablation, key=lambda a: a["val_ndcg@10"])["days"], ablation


def _tune(evaluator: Evaluator, tuning: list[data.Query], strategy: str,
          progress: Callable[[str], None]) -> tuple[BlendWeights, BlendWeights]:
    """Coordinate ascent on validation, each term over its grid with the others fixed:
    popularity and the query vector (the non-personalized default), then the content
    interest terms and how specific queries turn them down (the table for users without a
    behaviour vector), then behaviour, the long-term term, the ambiguity exponent and
    behaviour again (the table for users with one). Returns (without, with) behaviour."""
    def ascend(weights: BlendWeights, terms: Sequence[str]) -> BlendWeights:
        for term in terms:
            profile = None if term in ("popularity", "query") else "dynamic"
            scored = [(evaluator.ndcg(Method(term, replace(weights, **{term: value}), profile,
                                             strategy), tuning), -value, value)
                      for value in GRID[term]]
            # Ties go to the smaller weight: a term must earn its place.
            weights = replace(weights, **{term: max(scored)[2]})
        return weights

    plain = ascend(BlendWeights(1.0), ("popularity", "query"))
    content = ascend(plain, ("interest_long", "interest_short", "ambiguity", "interest_long"))
    full = ascend(content, ("behaviour", "interest_long", "ambiguity", "behaviour"))
    progress(f"tuned on validation ({strategy}): without behaviour {content}; with {full}")
    return content, full


def _methods(chosen: tuple[BlendWeights, BlendWeights], strategy: str,
             ablations: bool) -> list[Method]:
    """The baselines and the defaults; the ablations on the engine's default strategy."""
    content, full = chosen
    plain = replace(full, interest_long=0.0, interest_short=0.0, behaviour=0.0, ambiguity=0.0)
    methods = [
        Method("BM25 + popularity", BlendWeights(1.0, popularity=full.popularity), None,
               strategy),
        # weights=None: the configured path, exactly what /search does.
        Method(NON_PERSONALIZED, None, None, strategy),
        Method("static content profile", replace(plain, interest_long=content.interest_long
                                                 or 1.0), "static", strategy),
        Method("dynamic content profile", content, "dynamic", strategy),
        Method("behaviour only", replace(plain, behaviour=full.behaviour or 1.0),
               "dynamic", strategy),
        Method(DEFAULT, None, "dynamic", strategy, keep_hits=True),
    ]
    return methods if ablations else [methods[0], methods[1], methods[-1]]


def _score(evaluator: Evaluator, chosen: dict[str, tuple[BlendWeights, BlendWeights]],
           strategies: list[str],
           test: list[data.Query], progress: Callable[[str], None]) -> dict[str, Any]:
    by_protocol = {p: [q for q in test if q.protocol == p] for p in data.PROTOCOLS}
    out: dict[str, Any] = {"protocols": {}, "weights": {}}
    defaults: dict[str, dict[str, list[list[str]]]] = defaultdict(dict)
    for protocol, queries in by_protocol.items():
        bm25 = Method("BM25", BlendWeights(1.0), None, strategies[0])
        per: dict[str, dict[str, Any]] = {"BM25": {
            "all": metrics.per_query(evaluator.ranks(bm25, queries)), "strategy": "-"}}
        table: dict[str, Any] = {}
        tests: dict[str, Any] = {}
        for strategy in strategies:
            for m in _methods(chosen[strategy], strategy, ablations=strategy == strategies[0]):
                per[f"{m.name} ({strategy})"] = {
                    "all": metrics.per_query(evaluator.ranks(m, queries)), "strategy": strategy}
                if m.keep_hits:
                    defaults[protocol][strategy] = m.hits
            ours = per[f"{DEFAULT} ({strategy})"]["all"]["ndcg@10"]
            plain = per[f"{NON_PERSONALIZED} ({strategy})"]["all"]["ndcg@10"]
            best_np = max(["BM25", f"BM25 + popularity ({strategy})",
                           f"{NON_PERSONALIZED} ({strategy})"],
                          key=lambda n: per[n]["all"]["ndcg@10"].mean())
            tests[strategy] = {
                "best_non_personalized": best_np,
                "vs_best_non_personalized": metrics.paired_test(
                    ours, per[best_np]["all"]["ndcg@10"]),
                "vs_bm25_popularity": metrics.paired_test(
                    ours, per[f"BM25 + popularity ({strategy})"]["all"]["ndcg@10"]),
                "vs_static": metrics.paired_test(
                    ours, per[f"static content profile ({strategies[0]})"]["all"]["ndcg@10"]),
                "harm": metrics.paired_test(plain, ours),
                "relative_gain": _gain(ours, per[best_np]["all"]["ndcg@10"]),
                "relative_gain_vs_bm25_popularity": _gain(
                    ours, per[f"BM25 + popularity ({strategy})"]["all"]["ndcg@10"]),
            }
            out["weights"][strategy] = {"without_behaviour": asdict(chosen[strategy][0]),
                                        "with_behaviour": asdict(chosen[strategy][1])}
        for name, entry in per.items():
            table[name] = {"strategy": entry["strategy"],
                           **{k: {"mean": float(v.mean()), "ci95": metrics.bootstrap_ci(v)}
                              for k, v in entry["all"].items()}}
            progress(f"  {protocol} {name}: NDCG@10 {entry['all']['ndcg@10'].mean():.4f}")
        out["protocols"][protocol] = {"queries": len(queries), "methods": table, "tests": tests}
    by_strategy = {s: float(np.mean([out["protocols"][p]["methods"][f"{DEFAULT} ({s})"]
                                     ["ndcg@10"]["mean"] for p in data.PROTOCOLS]))
                   for s in strategies}
    out["strategy_ranking"] = sorted(by_strategy, key=lambda k: -by_strategy[k])
    if {"script_score", "knn_linear"} <= set(strategies):
        out["kendall_tau_script_vs_knn"] = {
            p: metrics.mean_kendall_tau(defaults[p]["script_score"], defaults[p]["knn_linear"])
            for p in data.PROTOCOLS}
    return out


def _gain(ours: np.ndarray, theirs: np.ndarray) -> float | None:
    return float(ours.mean() / theirs.mean() - 1.0) if theirs.mean() > 0 else None


def _drift(split: data.Split, doc_vectors: dict[str, Any], text_vectors: dict[str, list[float]],
           half_lives: tuple[float, float]) -> dict[str, Any]:
    """One user's interest over time: cosine of the vectors at each event to the final ones."""
    user = max(split.static_events, key=lambda u: len(split.static_events[u]))
    long_s, short_s = half_lives[0] * DAY, half_lives[1] * DAY
    series: list[tuple[float, Any, Any]] = []
    fold_events(None, user, [_stored(e, text_vectors) for e in split.static_events[user]
                             if e["doc_id"] in doc_vectors], doc_vectors, long_s, short_s, 0.0,
                after_each=lambda e, state: series.append((
                    int(e["timestamp"]) / 1000.0, interest_vector(state.long),
                    interest_vector(state.short))))
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
