"""The evaluation protocol on the real engines, pipeline and search layer.

1. Index the movies (embedded once) into each engine; with ``choose``, the title cleanup
   first (each in its own index, on validation).
2. Half-lives: each query's profile folds the user's events before it (the same pure
   functions the workers use: current at query time, as in service) for several (long,
   short) half-lives; keep the best on the validation queries.
3. Replay the training events, in time order, through the real event pipeline (users'
   interests and documents' popularity); check that its vectors equal the offline fold; pick
   popularity's half-life on validation; train the behaviour vectors (with ``choose``: each
   model, then the text map, on validation) and re-fold the users, as `es-interest train`
   does. With ``choose``, the language model fine-tuned on the log against the shipped one.
4. Tune each strategy's blend weights on validation queries only (every protocol; a sample,
   except ``linear_retriever`` and ``knn_linear``, whose blends are recomputed offline from
   each query's terms fetched once, so they tune on every validation query on a finer grid),
   term by term (coordinate ascent): popularity and the query vector first (the non-personalized
   default), then the user terms and the seen documents' weight on top of them; with
   ``choose``, the short-term half-life again beside behaviour (a content profile cannot
   tell what a short-term behaviour term is worth) and each seen policy (neutral, keep, floor, own),
   keeping the best; then how much the behaviour terms trust a model learned from little data
   (``_support_exponent``: at this size and on smaller deployments). The first engine tunes;
   the others run the same weights and half-lives, as the product ships one file.
5. The comparator: the best non-personalized arm of the engine (BM25, BM25 + popularity or
   the non-personalized default of any strategy) on each protocol's validation queries.
6. Score every arm on the test queries of each protocol (NDCG@10, MRR, Recall@100, 95%
   bootstrap intervals, paired tests against the comparator and the controls; per-query
   ranks kept). The leak bound (first engine): the default and the comparator again with
   popularity and behaviour learned only from events before each test query's time bucket.
   The full run writes the chosen configuration to plugin/ranking.json: what /search, the
   proxy and the workers then use.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from threadpoolctl import threadpool_limits

from plugin import fine_tuning, pipeline
from plugin.config import (
    BEHAVIOUR_MODELS,
    BLEND_STRATEGIES,
    LOCAL_ENGINE_URLS,
    PLACED_POLICIES,
    REPO_ROOT,
    SEEN_POLICIES,
    SEEN_SHARE_POLICIES,
    SHIPPED_RANKING,
    USER_TERMS,
    WEIGHT_NAMES,
    Settings,
    load_settings,
    without_ranking,
)
from plugin.documents import parse_document
from plugin.evaluation import data, learned_ranker, metrics
from plugin.evaluation.offline_blend import STRATEGIES as OFFLINE_STRATEGIES
from plugin.evaluation.offline_blend import LocalVectors, OfflineBlend, TermStore
from plugin.evaluation.report import write_report
from plugin.indices import setup_indices
from plugin.interest import SEEN_KEPT, DocVector, UserInterest, fold_events, interest_vector
from plugin.pipeline import behaviour, language_model, popularity
from plugin.pipeline.doc_vectors import fetch_doc_vectors
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
# The short-term terms' half-life, chosen beside behaviour, also from these (days): an hour
# and a minute, a session's latest interactions.
SHORT_HALF_LIVES = (1 / 24, 1 / 1440)
# What the short-term half-life's choice searches again under each candidate: the two
# behaviour weights jointly (one at a time, the long one's weight tuned under another
# half-life holds the short one at a local best), then the content one.
SHORT_TERMS = (("behaviour", "behaviour_short"), "interest_short")
POPULARITY_HALF_LIVES = [0.0, 90.0, 365.0]  # days; 0 = a weighted count
GRID: dict[str, tuple[float, ...]] = {
    "popularity": (0.0, 0.5, 1.0, 2.0),
    "query": (0.0, 0.5, 1.0),
    "behaviour": (0.0, 0.5, 1.0, 2.0, 4.0),
    "behaviour_short": (0.0, 0.5, 1.0, 2.0),
    "interest_long": (0.0, 0.5, 1.0, 2.0),
    "interest_short": (0.0, 0.5),
    "seen": (0.0, 0.25, 0.5, 0.75, 1.0),
    "seen_crowding": (0.0, 0.5, 1.0),
    "ambiguity": (0.0, 0.5, 1.0, 2.0, 3.0),
}
# Where the blend is scored offline a candidate costs no search: finer steps, wider range.
OFFLINE_GRID: dict[str, tuple[float, ...]] = {
    "popularity": (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0),
    "query": (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0),
    "behaviour": (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0),
    "behaviour_short": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
    "interest_long": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
    "interest_short": (0.0, 0.25, 0.5, 1.0),
    "seen": (0.0, 0.25, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9, 1.0),
    "seen_crowding": (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0),
    "ambiguity": (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0),
}
# The ambiguity exponent the user terms are first tuned under (the ascent tunes it after
# them): at 0 a two-word query gets the full personal weight, and the floors on the longer
# queries would hold every user term back before the exponent could turn them down there.
START_AMBIGUITY = 1.0
# The weights that say what seen documents get (the SEEN_SHARE_POLICIES only).
SEEN_WEIGHTS = ("seen", "seen_crowding")
# How many standard errors of its own mean a blend must clear each protocol's floor by, on
# validation, before the objective stops charging it (objective()).
FLOOR_MARGIN_SE = 1.0
# Validation queries every tuning step scores, split evenly over the protocols.
TUNING_QUERIES = {"full": 300, "quick": 150}
SIZE = 100
QUERY_THREADS = 4
CLEANUPS = ("years", "none")  # settings.embed_title_cleanup's options, compared on validation
DEFAULT = "personalized default"
NON_PERSONALIZED = "non-personalized default"
BM25_POPULARITY = "BM25 + popularity"
ITEM_PRIOR = "control: mean user's vectors"
OTHER_USER = "control: another user's vectors"
# The personalized default with each user's profile as it stood when training ended (the
# validation period and the test's earlier events left out): what keeping it current is worth.
FROZEN = "profile frozen at training's end"
# Each behaviour model's own settings, searched one at a time before the models compete.
MODEL_GRIDS: dict[str, dict[str, tuple[Any, ...]]] = {
    "item2vec": {"behaviour_item2vec_window": (5, 20, 50),
                 "behaviour_item2vec_ns_exponent": (-0.5, 0.0, 0.75),
                 "behaviour_item2vec_epochs": (10, 20, 40)},
    # How many users a document needs: ALS's penalty keeps a document one user liked near
    # that user's taste, so it can take documents the others leave without a vector.
    "als": {"behaviour_als_regularization": (0.05, 0.5, 2.0),
            "behaviour_min_interactions": (3, 1)},
}
MODEL_SETTINGS = tuple(k for grid in MODEL_GRIDS.values() for k in grid)
# How far a vector mapped from text is trusted against a learned one, where the map is tried.
TEXT_MAP_CONFIDENCES = (0.3, 0.5, 0.7)
BEHAVIOUR_SETTINGS = ("behaviour_model", "behaviour_text_map", "behaviour_text_map_confidence",
                      *MODEL_SETTINGS, "behaviour_support_exponent")
# How much the behaviour terms trust a model learned from little data (the weights scaled by
# its target coverage to this power), chosen on validation at the run's own size and at
# these smaller ones (the first so many users, each on its own deployment): one deployment
# tuned on all its data cannot tell a model's support from its weight.
SUPPORT_EXPONENTS = (0.0, 0.5, 1.0, 2.0)
SUPPORT_USERS = (40, 120)
TAIL_USERS = 3  # a target with fewer training users than this is a tail target
# A strategy overtakes the shipped order (the ranking file's) only where it beats the one
# ahead of it in this share of bootstrap resamples of the validation queries: two near-tied
# strategies would otherwise swap places on a rerun's noise, and the default with them.
ORDER_CONFIDENCE = 0.95
ORDER_RESAMPLES = 2000
# The leak bound: test queries in this many time buckets, popularity and behaviour vectors
# for each learned from the events before the bucket's first query only.
LEAK_BUCKETS = 4
LEAK_LIMIT = 0.02  # where later events add more gain than this, the past-only figures lead
# Fine-tuning the language model on the log's co-interaction pairs: a fixed number of pairs
# (a step per 32), so a rerun trains the same model, sized for 2 CPU cores; the time cap only
# stops a far slower machine (its report then says the pass was not complete).
FINE_TUNE_PAIRS = {"full": 4096, "quick": 256}
FINE_TUNE_BUDGET_S = {"full": 600.0, "quick": 180.0}

# A query's user vectors under one profile (None for the arms without a user).
Profile = Callable[[data.Query], UserVectors]
# Each protocol's best NDCG@10 without a user: what the tuning objective holds a blend to.
Floors = dict[str, float]
T = TypeVar("T")


@dataclass
class Method:
    name: str
    weights: BlendWeights | None  # None: the configured (shipped) weights
    profile: str | None  # None or a key of Evaluator.profiles
    strategy: str = "knn_linear"
    seen_policy: str | None = None  # None: the configured one
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


def by_user(profiles: dict[str, UserVectors]) -> Profile:
    """One profile per user, whatever the query's time."""
    return lambda q: profiles.get(q.user_id, UserVectors())


@dataclass(frozen=True)
class Evaluator:
    """Runs a method's queries on one deployment (``services``) with the given profiles."""

    services: Services
    profiles: dict[str, Profile]
    # The same deployment under another seen policy, made once (a Services loads its model).
    policies: dict[str, Services] = field(default_factory=dict)
    # Scores already measured: coordinate ascent revisits its current point at every step.
    scores: dict[tuple[Any, ...], float] = field(default_factory=dict)
    # Ranks the engine already gave (the agreement check and the strategy order ask alike).
    answered: dict[tuple[Any, ...], list[int | None]] = field(default_factory=dict)
    # Where set, tuning scores the offline strategies' blends in this process from each
    # query's terms, fetched once (offline_blend.py); ``ranks`` always asks the engine.
    offline: OfflineBlend | None = None

    def using(self, services: Services) -> Evaluator:
        """The same profiles on another configuration (other weights, another half-life)."""
        return replace(self, services=services, policies={}, scores={}, answered={},
                       offline=None)

    def reconfigured(self, **changes: Any) -> Evaluator:
        """The same deployment, profiles and fetched terms under other settings that change
        no term (a weight's scale): what it measured is forgotten."""
        return replace(self, services=Services(replace(self.services.settings, **changes)),
                       policies={}, scores={}, answered={})

    def tunes_offline(self, strategy: str) -> bool:
        return self.offline is not None and strategy in OFFLINE_STRATEGIES

    def for_policy(self, policy: str | None) -> Services:
        services = self.services
        if policy not in (None, services.settings.seen_policy):
            if policy not in self.policies:
                self.policies[policy] = Services(replace(services.settings, seen_policy=policy))
            services = self.policies[policy]
        return services

    def ranks(self, method: Method, queries: Sequence[data.Query],
              label: str = "") -> list[int | None]:
        services = self.for_policy(method.seen_policy)
        key = (method.weights, method.profile, method.strategy, services.settings.seen_policy,
               tuple(map(id, queries)))
        if key in self.answered and not method.keep_hits:
            return self.answered[key]

        def one(q: data.Query) -> list[str]:
            vectors = self.profiles[method.profile](q) if method.profile else None
            result = search(services, SearchParams(
                q.text, size=SIZE, weights=method.weights, strategy=method.strategy,
                vectors=vectors, ids_only=True))
            return [h["id"] for h in result.hits]

        # Without a user a query's hits depend on its words alone: one search per text.
        asked = (list({q.text: q for q in queries}.values()) if method.profile is None
                 else list(queries))
        # A few searches in flight: the engine answers one while this process builds the next.
        with ThreadPoolExecutor(max_workers=QUERY_THREADS) as pool:
            found = list(progress_bar(pool.map(one, asked), total=len(asked),
                                      desc=label or method.name, unit="query", leave=False))
        hits = found
        if method.profile is None:
            by_text = dict(zip((q.text for q in asked), found, strict=True))
            hits = [by_text[q.text] for q in queries]
        if method.keep_hits:
            method.hits.extend(hits)
        ranks = self.answered[key] = [next((n for n, h in enumerate(ids, 1) if h == q.movie_id),
                                           None) for q, ids in zip(queries, hits, strict=True)]
        return ranks

    def offline_ranks(self, method: Method, queries: Sequence[data.Query]) -> list[int | None]:
        """``ranks`` from the offline blend (where ``tunes_offline``), without a search each."""
        assert self.offline is not None
        assert method.strategy is not None
        return self.offline.ranks(self.for_policy(method.seen_policy), method.strategy,
                                  method.weights,
                                  method.profile,
                                  self.profiles[method.profile] if method.profile else None,
                                  queries)

    def choice_ranks(self, method: Method, queries: Sequence[data.Query],
                     label: str) -> list[int | None]:
        """The ranks a choice on validation scores: offline where the strategy tunes
        offline, else the engine's."""
        if self.tunes_offline(method.strategy):
            return self.offline_ranks(method, queries)
        return self.ranks(method, queries, label)

    def ndcg(self, method: Method, queries: Sequence[data.Query],
             floors: Floors | None = None) -> float:
        """Mean NDCG@10; with ``floors``, the tuning objective of the personal terms (see
        :func:`objective`)."""
        key = (method.weights, method.profile, method.strategy, method.seen_policy,
               tuple(map(id, queries)), None if floors is None else tuple(sorted(floors.items())))
        if key in self.scores:
            return self.scores[key]
        ndcg = metrics.per_query(self.choice_ranks(method, queries, "tuning"))["ndcg@10"]
        score = self.scores[key] = objective(ndcg, queries, floors)
        return score


def objective(ndcg: np.ndarray, queries: Sequence[data.Query],
              floors: Floors | None = None, margin_se: float = FLOOR_MARGIN_SE) -> float:
    """Mean per-query NDCG@10; with ``floors`` (each protocol's best ranking without a user),
    the tuning objective: the discovery queries' mean, less each protocol's shortfall below
    its floor plus ``margin_se`` standard errors of the blend's mean there. Gain on what is
    new to the user, no harm to any kind of query: a blend that buys a gain on one-word
    queries with a loss on longer ones, or on finding again what the user knows, pays for the
    loss twice. The margin: tuning pushes the user terms until a floor binds, and a floor met
    only just on validation is missed on about half of any fresh sample (the test's)."""
    if floors is None:
        return float(ndcg.mean())
    return _objective(ndcg, np.array([q.protocol for q in queries]), floors, margin_se)


def _objective(ndcg: np.ndarray, protocols: np.ndarray, floors: Floors,
               margin_se: float = FLOOR_MARGIN_SE) -> float:
    discovery = np.isin(protocols, list(data.DISCOVERY))
    score = float(ndcg[discovery].mean()) if discovery.any() else 0.0
    for protocol, floor in floors.items():
        score += shortfall(ndcg[protocols == protocol], floor, margin_se)
    return score


def shortfall(ndcg: np.ndarray, floor: float, margin_se: float = FLOOR_MARGIN_SE) -> float:
    """How far one kind of query's mean NDCG@10 falls below its floor plus ``margin_se``
    standard errors of that mean (0 where it does not, or there is no query)."""
    if not ndcg.size:
        return 0.0
    error = float(ndcg.std(ddof=1) / np.sqrt(ndcg.size)) if ndcg.size > 1 else 0.0
    return min(0.0, float(ndcg.mean()) - floor - margin_se * error)


def offline_profiles(split: data.Split, doc_vectors: dict[str, Any],
                     text_vectors: dict[str, list[float]], half_lives: tuple[float, float]
                     ) -> dict[str, UserVectors]:
    """Each user's long/short vectors from their training events: the workers' own fold
    (what the replay through the pipeline must reproduce)."""
    out = {}
    long_s, short_s = half_lives[0] * DAY, half_lives[1] * DAY
    for user, events in split.static_events.items():
        state, _ = fold_events(None, user, [_stored(e, text_vectors) for e in events
                                            if e["doc_id"] in doc_vectors],
                               doc_vectors, long_s, short_s, 0.0)
        if state is not None:
            out[user] = vectors_of(state)
    return out


def query_time_profiles(corpus: Corpus, docs: dict[str, DocVector],
                        half_lives: tuple[float, float],
                        queries: Sequence[data.Query]) -> Profile:
    """Each query's profile as the service has it then: every event of the user before the
    query (validation-period ones included for a test query), folded by the workers' fold;
    the behaviour term where ``docs`` carry behaviour vectors."""
    long_s, short_s = half_lives[0] * DAY, half_lives[1] * DAY
    times: dict[str, set[int]] = defaultdict(set)
    for q in queries:
        times[q.user_id].add(q.timestamp)
    out: dict[tuple[str, int], UserVectors] = {}
    for user, wanted in times.items():
        events = [_stored(e, corpus.text_vectors) for e in corpus.split.history.get(user, [])
                  if e["doc_id"] in docs]
        state: UserInterest | None = None
        folded = 0
        for t in sorted(wanted):
            # Folded incrementally: the events between the previous query's time and this one.
            upto = folded
            while upto < len(events) and events[upto]["timestamp"] < t * 1000:
                upto += 1
            state, _ = fold_events(state, user, events[folded:upto], docs, long_s, short_s,
                                   0.0)
            folded = upto
            out[(user, t)] = UserVectors() if state is None else vectors_of(state)
    return lambda q: out.get((q.user_id, q.timestamp), UserVectors())


def frozen_profiles(corpus: Corpus, docs: dict[str, DocVector],
                    half_lives: tuple[float, float]) -> Profile:
    """Each user's profile as the service held it when training ended: the training events
    only, by the workers' fold (every term, behaviour included where ``docs`` carry it), the
    same at every later query."""
    return by_user(offline_profiles(corpus.split, docs, corpus.text_vectors, half_lives))


def static_profiles(split: data.Split, doc_vectors: dict[str, Any]) -> dict[str, UserVectors]:
    """The mean of the user's whole training history, signed by feedback, no decay, computed
    once at the end of training (its seen documents too)."""
    out = {}
    for user, events in split.static_events.items():
        vecs = [np.sign(e.get("weight", 1.0)) * np.asarray(doc_vectors[e["doc_id"]].embedding)
                for e in events if e["doc_id"] in doc_vectors]
        liked = [e["doc_id"] for e in sorted(events, key=lambda e: -e["timestamp"])
                 if e["doc_id"] in doc_vectors and e.get("weight", 1.0) > 0]
        if vecs:
            mean = np.mean(vecs, axis=0)
            norm = float(np.linalg.norm(mean))
            if norm > 0:
                out[user] = UserVectors((mean / norm).tolist(), None,
                                        seen=tuple(dict.fromkeys(liked))[:SEEN_KEPT])
    return out


def _controls(dynamic: Profile, queries: Sequence[data.Query]) -> dict[str, Profile]:
    """The item-prior controls: the user's own seen documents, someone else's vectors (the
    mean user's, or another user's at their own query), so a gain over these is the user's."""
    profiles = [dynamic(q) for q in queries]

    def mean(name: str) -> list[float] | None:
        found = [np.asarray(v) for p in profiles if (v := getattr(p, name)) is not None]
        if not found:
            return None
        total = np.mean(found, axis=0)
        return (total / np.linalg.norm(total)).tolist()

    version = next((p.behaviour_version for p in profiles if p.behaviour_version), None)
    average = UserVectors(mean("long"), mean("short"), mean("behaviour"), version,
                          behaviour_short=mean("behaviour_short"))
    rng = np.random.default_rng(3)
    others = {}
    for q in queries:
        candidates = [o for o in queries if o.user_id != q.user_id]
        if candidates:
            others[(q.user_id, q.timestamp, q.movie_id)] = candidates[
                int(rng.integers(len(candidates)))]

    def other(q: data.Query) -> UserVectors:
        picked = others.get((q.user_id, q.timestamp, q.movie_id))
        return replace(dynamic(picked) if picked else UserVectors(), seen=dynamic(q).seen)

    return {ITEM_PRIOR: lambda q: replace(average, seen=dynamic(q).seen), OTHER_USER: other}


def _stored(event: dict[str, Any], text_vectors: dict[str, list[float]]) -> dict[str, Any]:
    """An event as the pipeline stores it (weight resolved, time in ms, text embedded)."""
    weight = event.get("weight", 1.0 if event["type"] == "comment" else 0.0)
    stored = {**event, "weight": weight, "timestamp": int(event["timestamp"]) * 1000}
    if event.get("text"):
        stored["text_embedding"] = text_vectors[event["text"]]
    return stored


def _services(engine: str, half_lives: tuple[float, float], prefix: str,
              popularity_days: float = 0.0, choose: bool = False) -> Services:
    """A deployment of this run on ``engine``: the configured settings, or where the run
    ``choose``s, the code's defaults for what the ranking file gives (its starting point)."""
    base = without_ranking(load_settings()) if choose else load_settings()
    settings: Settings = replace(base, engine_url=LOCAL_ENGINE_URLS[engine],
                                 index_prefix=f"{prefix}-{engine}",
                                 redis_url="redis://127.0.0.1:6379/8",
                                 half_life_long_s=half_lives[0] * DAY,
                                 half_life_short_s=half_lives[1] * DAY,
                                 popularity_half_life_s=popularity_days * DAY,
                                 seen_policy="neutral")
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


def tail_targets(corpus: Corpus, queries: Sequence[data.Query]) -> np.ndarray:
    """Per query, whether its target is a tail one (fewer than TAIL_USERS training users)."""
    users_of: dict[str, set[str]] = defaultdict(set)
    for e in corpus.train:
        users_of[e["doc_id"]].add(e["user_id"])
    return np.array([len(users_of[q.movie_id]) < TAIL_USERS for q in queries], dtype=bool)


@dataclass
class Tuned:
    """What validation chose, shared by the engines (the product ships one file)."""

    bm25_popularity: dict[str, BlendWeights] = field(default_factory=dict)
    plain: dict[str, BlendWeights] = field(default_factory=dict)  # non-personalized default
    chosen: dict[str, tuple[BlendWeights, BlendWeights]] = field(default_factory=dict)
    seen_policy: str | None = None
    # Each protocol's best non-personalized NDCG@10 on the tuning sample (first engine): the
    # floors of the tuning objective.
    floors: Floors | None = None
    # The same over every validation query: the floors of the seen policy and strategy order.
    validation_floors: Floors | None = None
    # The default strategy tuned under each policy not chosen, and each policy's validation.
    other_policies: dict[str, dict[str, tuple[BlendWeights, BlendWeights]]] = field(
        default_factory=dict)  # strategy -> policy -> (without, with) behaviour
    policy_validation: dict[str, dict[str, float]] = field(default_factory=dict)
    policy_strategy: str | None = None  # the strategy the seen policy was chosen on
    # The behaviour settings chosen (model, text map, item2vec), and each one's validation.
    behaviour: dict[str, Any] | None = None
    # Per candidate: the tuning objective, each protocol's NDCG@10 and the tail's.
    behaviour_validation: dict[str, dict[str, float]] = field(default_factory=dict)
    # The ranking file's behaviour settings: each step of the choice keeps them unless a
    # challenger surely beats them (``stable_choice``).
    behaviour_incumbent: dict[str, Any] = field(default_factory=dict)
    # "a > b": the share of resamples in which candidate a's objective beat b's (b held).
    behaviour_overtakes: dict[str, float] = field(default_factory=dict)
    # The tail targets' floor in the text map's step (the best ranking without a user on them).
    behaviour_tail_floor: float | None = None
    # The strategies in the order `auto` prefers: the shipped one, where validation surely
    # says otherwise changed (``stable_order``; the first engine, which personalizes each).
    strategy_order: list[str] = field(default_factory=list)
    strategy_validation: dict[str, float] = field(default_factory=dict)
    # "a > b": the share of resamples in which a's objective beat b's (b ahead of it).
    strategy_overtakes: dict[str, float] = field(default_factory=dict)
    # Per strategy scored offline, its blend's NDCG@10 and ranks against the engine's (every
    # validation query).
    offline_agreement: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (long, short) in days: the long one from the content ablation, the short one chosen
    # beside behaviour (``_short_half_life``), or the configured one where the run chooses none.
    half_lives: tuple[float, float] | None = None
    short_half_life_validation: list[dict[str, Any]] = field(default_factory=list)
    # Per data size and exponent: its coverage, validation NDCG@10 per protocol, objective.
    support_validation: list[dict[str, Any]] = field(default_factory=list)
    embed_title_cleanup: str | None = None  # the title cleanup the run embedded with


class PhaseClock:
    """Wall-clock seconds per phase of a run (summed where a phase recurs, e.g. per engine):
    where an evaluation's time goes, published with its figures."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def rounded(self) -> dict[str, float]:
        return {name: round(seconds, 1) for name, seconds in self.seconds.items()}


def run(quick: bool, users: int | None, engines: Sequence[str], out_dir: Path,
        progress: Callable[[str], None] = print,
        ranking_out: Path | None = None, choose: bool | None = None,
        language_model: Path | None = None) -> dict[str, Any]:
    """The whole protocol; ``ranking_out``: where the chosen configuration is written
    (the full run: the shipped plugin/ranking.json). ``choose`` (default: the full run
    only): choose the title cleanup, behaviour model, half-lives, seen policy, blend weights
    and whether to fine-tune the language model on validation; otherwise they stay the
    configured ones (the ablations are still reported), so the run measures what ships.
    ``language_model``: a model already fine-tuned on this split's training pairs (e.g. on a
    GPU, bench/gpu.py), compared on validation in place of the one fine-tuned here, with or
    without ``choose``.

    BLAS runs on one thread: the engines share the cores, and a second BLAS thread waiting
    for a busy core turns a blend's microseconds into milliseconds (docs/evaluation.md's
    phase times); the term fetches run in threads of their own."""
    prefix = f"eval-{uuid.uuid4().hex[:6]}"
    try:
        with threadpool_limits(1, "blas"):
            return _run(prefix, quick, users, engines, out_dir, progress, ranking_out,
                        choose, language_model)
    finally:
        _remove(prefix, engines)


def _remove(prefix: str, engines: Sequence[str]) -> None:
    """Whatever a run left on its engines and in its Redis database, whether it finished or
    was stopped (Ctrl-C, an engine's fault): its deployments are a gigabyte of indices."""
    for engine in engines:
        with suppress(Exception):  # an engine that is down holds nothing new
            _services(engine, HALF_LIVES[1], prefix).engine.delete_indices(f"{prefix}-*")
    with suppress(Exception):
        _services(engines[0], HALF_LIVES[1], prefix).redis.flushdb()


def _run(prefix: str, quick: bool, users: int | None, engines: Sequence[str], out_dir: Path,
         progress: Callable[[str], None], ranking_out: Path | None, choose: bool | None,
         language_model: Path | None) -> dict[str, Any]:
    choose = not quick if choose is None else choose
    started = time.time()
    first = _services(engines[0], HALF_LIVES[1], prefix, choose=choose)
    first.redis.flushdb()
    clock = PhaseClock()
    with clock.phase("split and embeddings"):
        corpus = _corpus(first, quick, users if users is not None else (40 if quick else None),
                         progress)
    tuning = _tuning_queries(corpus.split, quick)
    text_ablation: list[dict[str, Any]] = []
    cleanup = first.settings.embed_title_cleanup
    if choose:
        with clock.phase("embedded text (choice)"):
            corpus, text_ablation = _embedded_text(first, corpus, tuning, prefix, progress)
        cleanup = next(a["cleanup"] for a in text_ablation if a["chosen"])
    with clock.phase("indexing"):
        setup_indices(first.engine, first.settings, first.embedder.dims)
        _index(first, corpus.docs)
    with clock.phase("half-lives"):
        half_lives, ablation = _half_lives(first, corpus, tuning, progress)
    results: dict[str, Any] = {"engines": {}, "ablation": ablation,
                               "per_query": {}, "embedded_text": text_ablation}
    tuned = Tuned(embed_title_cleanup=cleanup)
    configured = load_settings()
    tuned.behaviour_incumbent = {k: getattr(configured, k) for k in BEHAVIOUR_SETTINGS}
    if not choose:
        # The configured ones (``_services`` starts every deployment neutral): a run that
        # chooses nothing measures what ships.
        tuned.seen_policy = configured.seen_policy
        tuned.behaviour = {k: getattr(first.settings, k) for k in BEHAVIOUR_SETTINGS}
        half_lives = tuned.half_lives = (configured.half_life_long_s / DAY,
                                         configured.half_life_short_s / DAY)
    static = static_profiles(corpus.split, corpus.doc_vectors)
    popularity_days = 0.0
    for engine in engines:
        services = _services(engine, half_lives, prefix, popularity_days, choose)
        if engine != engines[0]:
            with clock.phase("indexing"):
                setup_indices(services.engine, services.settings, first.embedder.dims)
                _index(services, corpus.docs)
        with clock.phase("event replay"):
            drift = _replay(services, engine, corpus, half_lives, progress)
        offered = available_strategies(services)
        if tuned.strategy_order:  # chosen on the first engine
            offered.sort(key=tuned.strategy_order.index)
        # The quick run personalizes each engine's default strategy only; the comparator
        # always spans every strategy the engine offers.
        strategies = offered[:1 if quick else None]
        if engine == engines[0]:
            with clock.phase("popularity half-life"):
                popularity_days, results["popularity_ablation"] = _popularity_half_life(
                    services, tuning, strategies[0], progress)
            if not choose:
                popularity_days = configured.popularity_half_life_s / DAY
            services = _services(engine, half_lives, prefix, popularity_days, choose)
        scored, per_query = _evaluate_engine(services, engine, corpus, static, tuning,
                                             offered, strategies, tuned, half_lives, progress,
                                             clock, first=engine == engines[0],
                                             quick=quick, choose=choose,
                                             language_model=language_model)
        # The first engine may choose another short-term half-life; the next ones use it.
        half_lives = tuned.half_lives or half_lives
        scored["pipeline_vs_offline_max_abs"] = drift
        results["engines"][engine] = scored
        results["per_query"][engine] = per_query
        services.engine.delete_indices(f"{services.settings.index_prefix}-*")
    split = corpus.split
    results.update({
        "quick": quick, "users": len(split.static_events), "train_events": len(corpus.train),
        "validation_queries": len(split.validation), "tuning_queries": len(tuning),
        "test_queries": len(split.test), "movies": len(corpus.catalog),
        "half_lives": half_lives,
        "short_half_life_validation": tuned.short_half_life_validation,
        "popularity_half_life_days": popularity_days,
        "seen_policy": {"chosen": tuned.seen_policy, "validation": tuned.policy_validation,
                        "strategy": tuned.policy_strategy,
                        "floors": tuned.validation_floors, "margin_se": FLOOR_MARGIN_SE},
        "embed_title_cleanup": cleanup,
        "behaviour_choice": {"chosen": tuned.behaviour,
                             "validation": tuned.behaviour_validation,
                             "incumbent": tuned.behaviour_incumbent,
                             "overtakes": tuned.behaviour_overtakes,
                             **({"tail_floor": tuned.behaviour_tail_floor}
                                if tuned.behaviour_tail_floor is not None else {})},
        "behaviour_support": tuned.support_validation,
        "strategy_choice": {"order": tuned.strategy_order,
                            "validation": tuned.strategy_validation,
                            "overtakes": tuned.strategy_overtakes,
                            "confidence": ORDER_CONFIDENCE, "resamples": ORDER_RESAMPLES},
        "offline_agreement": tuned.offline_agreement,
        "commit": _commit(), "seconds": round(time.time() - started, 1),
        "phase_seconds": clock.rounded(),
        "drift_user": _drift(split, corpus.doc_vectors, corpus.text_vectors, half_lives),
    })
    results["ranking"] = _ranking(results, tuned)
    _write(results, out_dir, ranking_out)
    return results


def _corpus(services: Services, quick: bool, users: int | None,
            progress: Callable[[str], None]) -> Corpus:
    """1. The split (per user, in time) and the movies' and typed tags' embeddings."""
    split, movies = data.split(users=users, max_queries_per_user=3 if quick else 1)
    catalog = _catalog(split, movies, quick)
    progress(f"{len(split.static_events)} users, {len(split.train)} training events, "
             f"{len(split.validation)} validation and {len(split.test)} test queries, "
             f"{len(catalog)} movies")
    tag_texts = sorted({e["text"] for events in split.history.values() for e in events
                        if e.get("text")})
    text_vectors = dict(zip(tag_texts, (v.tolist() for v in services.embedder.encode(
        tag_texts)), strict=True))
    docs, doc_vectors = _embed_catalog(services, catalog, services.settings.embed_title_cleanup)
    train = [e for e in split.train if e["doc_id"] in doc_vectors]
    return Corpus(split, catalog, docs, doc_vectors, text_vectors, train)


def _embed_catalog(services: Services, catalog: list[dict[str, Any]], cleanup: str
                   ) -> tuple[list[dict[str, Any]], dict[str, DocVector]]:
    """The movies as the product embeds them (plugin/documents.py), with this title cleanup."""
    settings = services.settings
    texts = [parse_document(m).embedded_text(settings.embed_fields, cleanup) for m in catalog]
    vectors = services.embedder.encode(texts)
    docs = [{**m, "embedding": v.tolist()} for m, v in zip(catalog, vectors, strict=True)]
    doc_vectors = {m["id"]: DocVector(v.tolist(), tuple(m["tags"]))
                   for m, v in zip(catalog, vectors, strict=True)}
    return docs, doc_vectors


def _embedded_text(services: Services, corpus: Corpus, tuning: list[data.Query],
                   prefix: str, progress: Callable[[str], None]
                   ) -> tuple[Corpus, list[dict[str, Any]]]:
    """What the model reads of a title, on validation: each cleanup's embeddings in their
    own index, scored with a content profile; the corpus re-embedded with the best."""
    ablation: list[dict[str, Any]] = []
    corpora: dict[str, Corpus] = {}
    weights = BlendWeights(1.0, 1.0, 0.0, 1.0, 0.5)
    for cleanup in CLEANUPS:
        docs, doc_vectors = ((corpus.docs, corpus.doc_vectors)
                             if cleanup == services.settings.embed_title_cleanup
                             else _embed_catalog(services, corpus.catalog, cleanup))
        trial = Services(replace(services.settings, index_prefix=f"{prefix}-text-{cleanup}"))
        setup_indices(trial.engine, trial.settings, trial.embedder.dims)
        _index(trial, docs)
        profiles = {"dynamic": query_time_profiles(replace(corpus, doc_vectors=doc_vectors),
                                                   doc_vectors, HALF_LIVES[1], tuning)}
        scores = {label: Evaluator(trial, profiles).ndcg(
            Method(label, weights if label == "content profile" else BlendWeights(1.0, 1.0),
                   "dynamic" if label == "content profile" else None), tuning)
            for label in ("query vector", "content profile")}
        ablation.append({"cleanup": cleanup, "score": sum(scores.values()),
                         **{f"val_ndcg@10 {k}": v for k, v in scores.items()}})
        progress(f"embedded title cleanup {cleanup}: validation NDCG@10 {scores}")
        trial.engine.delete_indices(f"{trial.settings.index_prefix}-*")
        corpora[cleanup] = replace(corpus, docs=docs, doc_vectors=doc_vectors)
    # Ties keep the configured cleanup.
    best = max(ablation, key=lambda a: (a["score"],
                                        a["cleanup"] == services.settings.embed_title_cleanup))
    return corpora[best["cleanup"]], [{**a, "chosen": a is best} for a in ablation]


def _tuning_queries(split: data.Split, quick: bool) -> list[data.Query]:
    """The validation queries every tuning step scores: a fixed random subset, as many of
    each protocol."""
    rng = np.random.default_rng(11)
    each = TUNING_QUERIES["quick" if quick else "full"] // len(data.PROTOCOLS)
    out = []
    for protocol in data.PROTOCOLS:
        pool = [q for q in split.validation if q.protocol == protocol]
        out += [pool[i] for i in sorted(rng.choice(len(pool), size=min(each, len(pool)),
                                                   replace=False))]
    return out


def _half_lives(services: Services, corpus: Corpus, tuning: list[data.Query],
                progress: Callable[[str], None]
                ) -> tuple[tuple[float, float], list[dict[str, Any]]]:
    """2. Half-lives, on validation only (first engine, knn_linear, content profile)."""
    ablation = []
    for hl in HALF_LIVES:
        profiles = {"dynamic": query_time_profiles(corpus, corpus.doc_vectors, hl, tuning)}
        score = Evaluator(services, profiles).ndcg(
            Method("dynamic", BlendWeights(1.0, 1.0, 0.0, 1.0, 0.5), "dynamic"), tuning)
        ablation.append({"long_days": hl[0], "short_days": hl[1], "val_ndcg@10": score})
        progress(f"half-lives {hl}: validation NDCG@10 {score:.4f}")
    best = max(ablation, key=lambda a: a["val_ndcg@10"])
    return (best["long_days"], best["short_days"]), ablation


def _short_half_life(evaluator: Evaluator, corpus: Corpus, docs: dict[str, DocVector],
                     queries: list[data.Query], strategy: str,
                     weights: tuple[BlendWeights, BlendWeights], policy: str,
                     floors: Floors | None, half_lives: tuple[float, float],
                     progress: Callable[[str], None]
                     ) -> tuple[float, tuple[BlendWeights, BlendWeights], list[dict[str, Any]]]:
    """The short-term terms' half-life, chosen beside behaviour: under each candidate's
    profiles at query time the tuned blend's short-term and behaviour weights are searched
    again (both tables), and the blend with behaviour's objective decides (ties keep the
    current one). Returns the half-life (days), its weights and each candidate's score."""
    choices: list[dict[str, Any]] = []
    for short in dict.fromkeys([half_lives[1], *SHORT_HALF_LIVES]):
        name = "dynamic" if short == half_lives[1] else short_profile(short)
        candidate = evaluator if name == "dynamic" else replace(evaluator, profiles={
            **evaluator.profiles,
            name: query_time_profiles(corpus, docs, (half_lives[0], short), queries)})
        without, full = (_ascend(candidate, queries, strategy, w, terms, policy, floors, name)
                         for w, terms in zip(weights, (("interest_short",), SHORT_TERMS),
                                             strict=True))
        score = candidate.ndcg(Method(name, full, name, strategy, seen_policy=policy),
                               queries, floors)
        choices.append({"short_days": short, "objective": score,
                        "weights": asdict(full), "weights_without_behaviour": asdict(without)})
        progress(f"short-term half-life {short:g} d: validation objective {score:.4f} ({full})")
    best = max(choices, key=lambda c: (c["objective"], c["short_days"] == half_lives[1]))
    for c in choices:
        c["chosen"] = c is best
        if evaluator.offline is not None and c is not best and c["short_days"] != half_lives[1]:
            evaluator.offline.forget({short_profile(c["short_days"])})
    return best["short_days"], (BlendWeights(**best["weights_without_behaviour"]),
                                BlendWeights(**best["weights"])), choices


def _profiles(corpus: Corpus, docs: dict[str, DocVector], static: dict[str, UserVectors],
              half_lives: tuple[float, float], tuning: list[data.Query]) -> dict[str, Profile]:
    """Every profile the arms use. Every validation query, not only the tuning sample: the
    discrete choices (seen policy, strategy order) are made on all of them."""
    test = corpus.split.test
    dynamic = query_time_profiles(corpus, docs, half_lives, [*corpus.split.validation, *test])
    return {"static": by_user(static), "dynamic": dynamic,
            "frozen": frozen_profiles(corpus, docs, half_lives),
            **_controls(dynamic, [*tuning, *test])}


def short_profile(short_days: float) -> str:
    """The name of a candidate short-term half-life's profile (``_short_half_life``)."""
    return f"dynamic, short half-life {short_days:g} d"


def _with_profiles(evaluator: Evaluator, profiles: dict[str, Profile],
                   fetched: str) -> Evaluator:
    """``evaluator`` with ``profiles`` in place of its own: what it measured or fetched
    under the replaced names is forgotten (the terms without a user stay), and the terms
    fetched under the profile named ``fetched`` become the new "dynamic" profile's."""
    if evaluator.offline is not None:
        evaluator.offline.forget(set(evaluator.profiles) | set(profiles))
        evaluator.offline.rename(fetched, "dynamic")
    return Evaluator(evaluator.services, profiles, offline=evaluator.offline)


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
    if any(content[u].seen != v.seen for u, v in offline.items() if u in content):
        raise RuntimeError("the pipeline's seen documents differ from the offline fold's")
    progress(f"{engine}: pipeline vs offline fold, max |difference| {drift:.2e}")
    return drift


def _evaluate_engine(services: Services, engine: str, corpus: Corpus,
                     static: dict[str, UserVectors], tuning: list[data.Query],
                     offered: list[str], strategies: list[str], tuned: Tuned,
                     half_lives: tuple[float, float], progress: Callable[[str], None],
                     clock: PhaseClock, first: bool = False, quick: bool = False,
                     choose: bool = True, language_model: Path | None = None
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """4-6. Popularity and behaviour from the log, profiles at each query's time, weights
    tuned on validation (what ``tuned`` lacks yet), the comparator, then every arm on the
    test queries. On the ``first`` engine also the language model fine-tuned on the log
    (validation; where it ``choose``s), and the leak bound: the default and the comparator
    again with popularity and behaviour learned from the past only."""
    with clock.phase("behaviour (model choice and training)"):
        popularity.rebuild(services)
        services, trained = _behaviour(services, corpus, offered[0], tuned, half_lives,
                                       tuning, progress)
    progress(f"{engine}: behaviour vectors {trained}")
    lm_trial = None
    if first and (choose or language_model):
        with clock.phase("language model trial"):
            lm_trial = _language_model(
                services, corpus, tuning, half_lives,
                FINE_TUNE_BUDGET_S["quick" if quick else "full"],
                FINE_TUNE_PAIRS["quick" if quick else "full"], progress, language_model)
    with clock.phase("profiles at query time"):
        docs = fetch_doc_vectors(services, corpus.doc_vectors, fresh=True)
        evaluator = Evaluator(services, _profiles(corpus, docs, static, half_lives, tuning),
                              offline=OfflineBlend(services.settings.personal_candidates, SIZE,
                                                   local=LocalVectors.of(docs)))
    validation = corpus.split.validation

    def tuning_for(strategy: str) -> list[data.Query]:
        """Where the blend is scored offline, tuning takes every validation query."""
        return validation if evaluator.tunes_offline(strategy) else tuning

    for s in offered:
        if s not in tuned.plain:
            with clock.phase(f"tuning {s} without a user"):
                tuned.bm25_popularity[s] = _ascend(evaluator, tuning_for(s), s,
                                                   BlendWeights(1.0), ("popularity",))
                tuned.plain[s] = _ascend(evaluator, tuning_for(s), s, BlendWeights(1.0),
                                         ("popularity", "query"))
    with clock.phase("comparator on validation"):
        sampled = _comparator(evaluator, tuned, offered, tuning)
    comparator = best_arms(sampled)
    progress(f"{engine}: best non-personalized on validation: {comparator}")
    if tuned.floors is None:
        tuned.floors = {p: sampled[p][comparator[p]] for p in data.PROTOCOLS}
    for s in strategies:
        if s in tuned.chosen:
            continue
        if not choose or (quick and not first):
            # Without choosing, every strategy runs the configured (shipped) weights; the
            # quick run that chooses tunes on the first engine only.
            configured = services.settings
            tuned.chosen[s] = (BlendWeights(**configured.blend_weights_without_behaviour[s]),
                               BlendWeights(**configured.blend_weights[s]))
            continue
        # The first strategy tunes under each seen policy and chooses it; the others tune
        # under the policy chosen.
        with clock.phase("comparator on validation"):
            floors = (_validation_floors(evaluator, validation, offered, tuned)
                      if evaluator.tunes_offline(s) else tuned.floors)
        with clock.phase(f"tuning {s}"):
            tuned.chosen[s] = _tune(evaluator, tuning_for(s), s, progress,
                                    plain=tuned.plain[s],
                                    policy=tuned.seen_policy or "neutral", floors=floors)
        if tuned.half_lives is None:
            with clock.phase("short-term half-life (choice)"):
                short, tuned.chosen[s], tuned.short_half_life_validation = _short_half_life(
                    evaluator, corpus, docs, tuning_for(s), s, tuned.chosen[s],
                    tuned.seen_policy or "neutral", floors, half_lives, progress)
                if short != half_lives[1]:
                    half_lives = (half_lives[0], short)
                    evaluator = _with_profiles(evaluator, _profiles(
                        corpus, docs, static, half_lives, tuning), short_profile(short))
            tuned.half_lives = half_lives
        if tuned.seen_policy is None:
            with clock.phase("seen policy (choice)"):
                _choose_seen_policy(evaluator, tuning_for(s), validation, offered, s, tuned,
                                    floors, progress)
        if first and not tuned.support_validation:
            with clock.phase("behaviour support (choice)"):
                exponent = _support_exponent(evaluator, corpus, offered, s, tuned,
                                             half_lives, trained["coverage"], progress)
            evaluator = evaluator.reconfigured(behaviour_support_exponent=exponent)
            services = evaluator.services
    if first:
        # Each strategy scored offline, at its tuned weights (or the configured ones where
        # this run tuned none), on every validation query: offline and through the engine.
        with clock.phase("offline agreement"):
            for s in filter(evaluator.tunes_offline, offered):
                weights = (tuned.chosen[s][1] if s in tuned.chosen
                           else BlendWeights(**services.settings.blend_weights[s]))
                tuned.offline_agreement[s] = _offline_agreement(
                    evaluator, validation, s, weights, tuned.seen_policy or "neutral",
                    tuned=s in tuned.chosen)
                progress(f"offline blend against the engine ({s}): "
                         f"{tuned.offline_agreement[s]}")
    if first and choose and len(strategies) > 1:
        with clock.phase("strategy order (choice)"):
            strategies = _order_strategies(evaluator, corpus.split.validation, offered,
                                           strategies, tuned, progress)
    # From here the chosen weights and policy are the configured ones: the defaults are
    # measured through the same path as /search (weights=None).
    offline = evaluator.offline
    evaluator = evaluator.using(Services(replace(
        services.settings, seen_policy=tuned.seen_policy or "neutral",
        blend_weights={s: asdict(w[1]) for s, w in tuned.chosen.items()},
        blend_weights_without_behaviour={s: asdict(w[0]) for s, w in tuned.chosen.items()})))
    with clock.phase("test queries"):
        scored, per_query = _score(evaluator, tuned, offered, strategies, comparator, corpus,
                                   progress, ablations=first)
    scored.update(strategies=strategies, offered=offered, comparator_validation=sampled,
                  engine=f"{services.engine.kind.value} {services.engine.version}",
                  behaviour=trained)
    if lm_trial is not None:
        scored["language_model"] = lm_trial
    learned_on = next((s for s in strategies if s in OFFLINE_STRATEGIES), None)
    if first and offline is not None and learned_on is not None:
        with clock.phase("learned ranker (measured)"):
            scored["learned_ranker"] = learned_ranker.measure(
                offline, evaluator.services, learned_on, validation, corpus.split.test,
                "dynamic", evaluator.profiles["dynamic"], progress)
    if first:
        with clock.phase("leak bound"):
            scored["leak_bound"], per_query["past_only"] = _leak_bound(
                evaluator, tuned, offered, strategies[0], comparator, corpus, scored,
                half_lives, progress)
    return scored, per_query


def _behaviour(services: Services, corpus: Corpus, strategy: str, tuned: Tuned,
               half_lives: tuple[float, float], tuning: list[data.Query],
               progress: Callable[[str], None]) -> tuple[Services, dict[str, Any]]:
    """Behaviour vectors trained from the log, as `es-interest train` does. On the first
    engine, validation chooses the model (each without the text map and at its own best
    settings, MODEL_GRIDS searched one at a time), then whether cold documents get vectors
    mapped from their text. Each candidate is scored on every validation query with the
    blend ``_tune`` would give it: from the content terms this run tuned before any training
    (``strategy``'s non-personalized default, then its content terms under the starting seen
    policy), its behaviour terms and the rest searched beside them (BEHAVIOUR_STEPS), so the
    scores depend on nothing the last run wrote. Each step keeps the ranking file's setting
    unless another surely beats it (``stable_choice``, as the strategy order does): reruns
    of the same code chose different models on near ties. The score is the tuning objective
    (``objective``: the discovery protocols' mean, held to each protocol's floor), so a
    model is not chosen for finding again what the user knows at the cost of what is new;
    the floors here are ``strategy``'s non-personalized default's and BM25 + popularity's
    (the comparator is tuned after the vectors it would otherwise wait on). The model's
    choice gives the tail targets no floor of their own: tried, it chose one user a document
    for a vector, and the leak bound traced that choice's gain to other users' later events.
    The map's step (each of TEXT_MAP_CONFIDENCES, or none) does: the map exists for the
    documents with too few users, and it reads their text, not their users, so the tail
    targets are held to their floor (the best non-personalized ranking on them) like a
    protocol.

    The candidates share every term search but the behaviour terms' (``TermStore``): each
    training rewrites the documents, which moves BM25's statistics and the kNN graphs a
    little, so the tuning after the last training fetches its terms afresh (the agreement
    check compares them with the engine's answers)."""
    if tuned.behaviour is None:
        terms = TermStore()
        validation = corpus.split.validation
        tail = tail_targets(corpus, validation)
        tail_queries = [q for q, t in zip(validation, tail, strict=True) if t]
        policy = services.settings.seen_policy
        untrained = fetch_doc_vectors(services, corpus.doc_vectors, fresh=True)
        reference = Evaluator(services, {"dynamic": query_time_profiles(
            corpus, untrained, half_lives, validation)}, offline=OfflineBlend(
                services.settings.personal_candidates, SIZE, shared=terms,
                local=LocalVectors.of(untrained)))
        offline = reference.tunes_offline(strategy)
        # Where the blend is scored offline, tuning takes every validation query (as later).
        queries = validation if offline else tuning
        bm25_popularity = _ascend(reference, queries, strategy, BlendWeights(1.0),
                                  ("popularity",))
        plain = _ascend(reference, queries, strategy, BlendWeights(1.0),
                        ("popularity", "query"))
        if offline:  # the same weights the comparator's tuning would find: kept for it
            tuned.bm25_popularity[strategy], tuned.plain[strategy] = bm25_popularity, plain

        def best_without_user(subset: list[data.Query]) -> float:
            return max((reference.ndcg(Method("floor", w, None, strategy), subset)
                        for w in (plain, bm25_popularity)), default=0.0)

        floors: Floors = {p: best_without_user([q for q in validation if q.protocol == p])
                          for p in data.PROTOCOLS}
        tuned.behaviour_tail_floor = best_without_user(tail_queries)
        weights = _tune_content(reference, queries, strategy, plain, policy, floors)
        progress(f"behaviour candidates are tuned from {weights} (seen {policy})")

        protocols = np.array([q.protocol for q in validation])
        per_query: dict[str, np.ndarray] = {}

        def name(choice: dict[str, Any]) -> str:
            own = ("behaviour_model", "behaviour_text_map",
                   *(("behaviour_text_map_confidence",) if choice["behaviour_text_map"]
                     else ()),
                   *MODEL_GRIDS.get(choice["behaviour_model"], {}))
            return ", ".join(f"{k.removeprefix('behaviour_')} {choice[k]}"
                             for k in own).lower()

        def score(choice: dict[str, Any]) -> dict[str, float]:
            label = name(choice)
            if label in tuned.behaviour_validation:
                return tuned.behaviour_validation[label]
            candidate = Services(replace(services.settings, **choice))
            # The profiles are folded here from the documents' vectors: the users' interest
            # documents need no re-fold until the model chosen is trained.
            behaviour.train(candidate, refold=False)
            docs = fetch_doc_vectors(candidate, corpus.doc_vectors, fresh=True)
            profile = query_time_profiles(corpus, docs, half_lives, validation)
            evaluator = Evaluator(candidate, {"dynamic": profile}, offline=OfflineBlend(
                candidate.settings.personal_candidates, SIZE, shared=terms,
                local=LocalVectors.of(docs)))
            # Each candidate gets the blend ``_tune`` would give it: its behaviour weights
            # and the others searched again beside them (a model is not judged by weights
            # another model's vectors were tuned with).
            fitted = _tune_steps(evaluator, queries, strategy, weights, BEHAVIOUR_STEPS,
                                 policy, floors)
            ndcg = metrics.per_query(evaluator.choice_ranks(
                Method("behaviour", fitted, "dynamic", strategy, seen_policy=policy),
                validation, "behaviour"))["ndcg@10"]
            value = objective(ndcg, validation, floors)
            per_query[label] = ndcg
            entry = tuned.behaviour_validation[label] = {
                "objective": value, "tail": float(ndcg[tail].mean()) if tail.any() else 0.0,
                "objective_tail_floor": value + shortfall(ndcg[tail],
                                                          tuned.behaviour_tail_floor or 0.0),
                **metrics.protocol_means(ndcg, validation)}
            progress(f"behaviour {label}: validation {entry} "
                     f"(behaviour {fitted.behaviour:g}, short {fitted.behaviour_short:g})")
            return entry

        def share(key: str) -> Callable[[dict[str, Any], dict[str, Any]], float]:
            def of(challenger: dict[str, Any], incumbent: dict[str, Any]) -> float:
                value = overtake_share(
                    per_query[name(challenger)], per_query[name(incumbent)], protocols,
                    floors, tail=tail if key == "objective_tail_floor" else None,
                    tail_floor=tuned.behaviour_tail_floor or 0.0)
                tuned.behaviour_overtakes[f"{name(challenger)} > {name(incumbent)}"] = value
                return value
            return of

        def pick(incumbent: dict[str, Any], others: list[dict[str, Any]],
                 key: str = "objective") -> dict[str, Any]:
            for choice in (incumbent, *others):
                score(choice)
            return stable_choice(incumbent, others, share(key), lambda c: score(c)[key])

        shipped = tuned.behaviour_incumbent

        def model(label: str) -> dict[str, Any]:
            return {"behaviour_model": label, "behaviour_text_map": False,
                    "behaviour_text_map_confidence": shipped["behaviour_text_map_confidence"],
                    **{k: shipped[k] for k in MODEL_SETTINGS}}

        def own_best(label: str) -> dict[str, Any]:
            """The model at its own best settings (MODEL_GRIDS, one at a time from the
            ranking file's, each kept unless another value surely beats it): a model is not
            judged at a setting that does not suit it."""
            choice = model(label)
            for key, values in MODEL_GRIDS.get(label, {}).items():
                choice = pick(choice, [{**choice, key: v} for v in values if v != choice[key]])
            return choice

        held = own_best(shipped["behaviour_model"])
        best = pick(held, [own_best(label) for label in BEHAVIOUR_MODELS
                           if label != shipped["behaviour_model"]])
        options = [best, *({**best, "behaviour_text_map": True,
                            "behaviour_text_map_confidence": c} for c in TEXT_MAP_CONFIDENCES)]
        incumbent = next((o for o in options if shipped["behaviour_text_map"]
                          and o["behaviour_text_map"] and o["behaviour_text_map_confidence"]
                          == shipped["behaviour_text_map_confidence"]), best)
        tuned.behaviour = pick(incumbent, [o for o in options if o is not incumbent],
                               "objective_tail_floor")
    chosen = Services(replace(services.settings, **tuned.behaviour))
    return chosen, behaviour.train(chosen)


def _support_exponent(evaluator: Evaluator, corpus: Corpus, offered: list[str],
                      strategy: str, tuned: Tuned, half_lives: tuple[float, float],
                      coverage: float, progress: Callable[[str], None]) -> float:
    """How much the behaviour terms trust a model learned from little data
    (``behaviour_support_exponent``), on validation: at this run's size (``evaluator``'s
    deployment) and on a deployment of each of SUPPORT_USERS smaller ones (their movies and
    events only, the behaviour model and title cleanup chosen), each exponent in
    SUPPORT_EXPONENTS scored with ``strategy``'s tuned weights and seen policy; the tuning
    objective against that size's best non-personalized ranking, summed over the sizes.
    Ties keep the configured exponent. The behaviour settings chosen carry it (and so the
    ranking file and the other engines). ``coverage``: the run's own model's."""
    assert tuned.behaviour is not None
    settings = evaluator.services.settings
    policy = tuned.seen_policy or "neutral"
    weights = tuned.chosen[strategy][1]
    sizes: list[tuple[int, float, Evaluator, list[data.Query], str | None]] = [
        (len(corpus.split.static_events), coverage, evaluator, corpus.split.validation, None)]
    for users in SUPPORT_USERS:
        if users >= len(corpus.split.static_events):
            continue
        split, movies = data.split(users=users, max_queries_per_user=3)
        if {q.protocol for q in split.validation} != set(data.PROTOCOLS):
            progress(f"behaviour support: {users} users ask too few queries; left out")
            continue
        # Its movies as this run embedded them (a movie's text is the same in any split);
        # only those this run left out are embedded here.
        catalog = _catalog(split, movies, True)
        embedded = {d["id"]: d for d in corpus.docs}
        docs, doc_vectors = _embed_catalog(
            evaluator.services, [m for m in catalog if m["id"] not in embedded],
            tuned.embed_title_cleanup or settings.embed_title_cleanup)
        docs += [embedded[m["id"]] for m in catalog if m["id"] in embedded]
        doc_vectors.update((m["id"], corpus.doc_vectors[m["id"]]) for m in catalog
                           if m["id"] in embedded)
        small = Corpus(split, [], docs, doc_vectors, corpus.text_vectors,
                       [e for e in split.train if e["doc_id"] in doc_vectors])
        prefix = f"{settings.index_prefix}-support{users}"
        deployment = Services(replace(settings, index_prefix=prefix, **tuned.behaviour))
        setup_indices(deployment.engine, deployment.settings, deployment.embedder.dims)
        _index(deployment, docs)
        _replay(deployment, f"{users} users", small, half_lives, progress)
        popularity.rebuild(deployment)
        trained = behaviour.train(deployment, refold=False)
        vectors = fetch_doc_vectors(deployment, doc_vectors, fresh=True)
        profile = query_time_profiles(small, vectors, half_lives, split.validation)
        sizes.append((users, trained["coverage"], Evaluator(
            deployment, {"dynamic": profile}, offline=OfflineBlend(
                settings.personal_candidates, SIZE, local=LocalVectors.of(vectors))),
            split.validation, prefix))
    totals = dict.fromkeys(SUPPORT_EXPONENTS, 0.0)
    for users, covered, sized, validation, own_prefix in sizes:
        floors = {protocol: max(scores.values()) for protocol, scores in
                  _comparator(sized, tuned, offered, validation).items()}
        for exponent in SUPPORT_EXPONENTS:
            trial = sized.reconfigured(behaviour_support_exponent=exponent)
            ranks = trial.choice_ranks(Method(DEFAULT, weights, "dynamic", strategy,
                                              seen_policy=policy), validation, "support")
            ndcg = metrics.per_query(ranks)["ndcg@10"]
            value = objective(ndcg, validation, floors)
            totals[exponent] += value
            tuned.support_validation.append({
                "users": users, "coverage": round(covered, 4), "exponent": exponent,
                "objective": round(value, 4),
                **{p: round(v, 4) for p, v in metrics.protocol_means(ndcg, validation).items()},
                **{f"floor {p}": round(f, 4) for p, f in floors.items()}})
            progress(f"behaviour support exponent {exponent:g} at {users} users (coverage "
                     f"{covered:.2f}): objective {value:.4f}")
        if own_prefix is not None:
            sized.services.engine.delete_indices(f"{own_prefix}-*")
    configured = settings.behaviour_support_exponent
    chosen = max(SUPPORT_EXPONENTS, key=lambda e: (round(totals[e], 6), e == configured))
    for row in tuned.support_validation:
        row["chosen"] = row["exponent"] == chosen
    tuned.behaviour["behaviour_support_exponent"] = chosen
    return chosen


def _language_model(services: Services, corpus: Corpus, tuning: list[data.Query],
                    half_lives: tuple[float, float], budget_s: float, pairs: int,
                    progress: Callable[[str], None], trained: Path | None = None
                    ) -> dict[str, Any]:
    """The model fine-tuned on ``pairs`` of the log's co-interaction pairs (`es-interest
    train --model`, stopped after ``budget_s`` on a slow machine; or ``trained``, fine-tuned
    elsewhere on the same split) against the shipped one, on validation: the catalogue and
    typed tags re-embedded by each in its own index, scored by the query vector alone and
    with a content profile, overall and on tail targets."""
    tuned_path = trained or Path(tempfile.mkdtemp(prefix="es-interest-fine-tune-"))
    try:
        if trained is None:
            report = language_model.train_model(services, tuned_path, budget_s, pairs)
        else:
            report = {"trained": True, "path": str(trained), "elsewhere": True,
                      **json.loads((trained / fine_tuning.REPORT).read_text())}
        progress(f"language model fine-tuned: {report}")
        if not report.get("trained"):
            return {"report": report}
        tail = tail_targets(corpus, tuning)
        cleanup = services.settings.embed_title_cleanup
        out: dict[str, Any] = {"report": report, "tail_queries": int(tail.sum()), "models": {}}
        for label, model in (("shipped", None), ("fine-tuned", str(tuned_path))):
            trial = services if model is None else Services(replace(
                services.settings, model=model, model_backend="torch",
                index_prefix=f"{services.settings.index_prefix}-lm"))
            trial_corpus = corpus
            if model is not None:
                setup_indices(trial.engine, trial.settings, trial.embedder.dims)
                docs, doc_vectors = _embed_catalog(trial, corpus.catalog, cleanup)
                _index(trial, docs)
                texts = list(corpus.text_vectors)
                trial_corpus = replace(corpus, docs=docs, doc_vectors=doc_vectors,
                                       text_vectors=dict(zip(texts, (
                                           v.tolist() for v in trial.embedder.encode(texts)),
                                           strict=True)))
            evaluator = Evaluator(trial, {"dynamic": query_time_profiles(
                trial_corpus, trial_corpus.doc_vectors, half_lives, tuning)})
            scores: dict[str, Any] = {}
            for arm, weights, profile in (
                    ("query vector", BlendWeights(1.0, 1.0), None),
                    ("content profile", BlendWeights(1.0, 1.0, 0.0, 1.0, 0.5), "dynamic")):
                ndcg = metrics.per_query(evaluator.ranks(
                    Method(arm, weights, profile), tuning, f"{label}: {arm}"))["ndcg@10"]
                scores[arm] = {"all": float(ndcg.mean()),
                               "tail": float(ndcg[tail].mean()) if tail.any() else None}
            out["models"][label] = scores
            progress(f"language model {label}: validation NDCG@10 {scores}")
            if model is not None:
                trial.engine.delete_indices(f"{trial.settings.index_prefix}-*")

        def total(label: str) -> float:
            return sum(v["all"] for v in out["models"][label].values())

        out["wins"] = total("fine-tuned") > total("shipped")
        return out
    finally:
        if trained is None:
            shutil.rmtree(tuned_path, ignore_errors=True)


def _validation_floors(evaluator: Evaluator, validation: list[data.Query], offered: list[str],
                       tuned: Tuned) -> Floors:
    """Each protocol's best non-personalized NDCG@10 over every validation query: the floors
    the discrete choices hold the personalized default to."""
    if tuned.validation_floors is None:
        tuned.validation_floors = {
            protocol: max(scores.values())
            for protocol, scores in _comparator(evaluator, tuned, offered, validation).items()}
    return tuned.validation_floors


def _choose_seen_policy(evaluator: Evaluator, tuning: list[data.Query],
                        validation: list[data.Query], offered: list[str], strategy: str,
                        tuned: Tuned, tuning_floors: Floors | None,
                        progress: Callable[[str], None]) -> None:
    """The seen policy: the default strategy tuned under each (on ``tuning``),
    compared on every validation query (a sample of a hundred re-finding queries let a
    policy pass the floor there and fall below it on test); the best of PLACED_POLICIES
    ships, as the product promises that what a user knows keeps its place (``neutral``
    lets unseen documents near the user's taste pass a known one: measured through the API,
    `es-interest eval-api`). A strategy tuned offline is
    compared offline too (the agreement check measures that against the engine)."""
    first = tuned.seen_policy or "neutral"
    candidates = {first: tuned.chosen[strategy]}
    for policy in SEEN_POLICIES:
        if policy not in candidates:
            candidates[policy] = _tune(evaluator, tuning, strategy, progress,
                                       plain=tuned.plain[strategy], policy=policy,
                                       floors=tuning_floors)
    floors = _validation_floors(evaluator, validation, offered, tuned)
    for policy, weights in candidates.items():
        method = Method(policy, weights[1], "dynamic", strategy, seen_policy=policy)
        ndcg = metrics.per_query(evaluator.choice_ranks(method, validation,
                                                        f"seen policy {policy}"))["ndcg@10"]
        tuned.policy_validation[policy] = {
            "objective": objective(ndcg, validation, floors),
            **metrics.protocol_means(ndcg, validation)}
    scores = tuned.policy_validation
    # What the user knows keeps its place (PLACED_POLICIES): the others are measured beside
    # them, not shipped. Ties go to the policy listed first (config.SEEN_POLICIES).
    tuned.seen_policy = max(PLACED_POLICIES, key=lambda p: (scores[p]["objective"],
                                                            -SEEN_POLICIES.index(p)))
    tuned.policy_strategy = strategy
    tuned.chosen[strategy] = candidates.pop(tuned.seen_policy)
    tuned.other_policies[strategy] = candidates
    progress(f"seen policy on validation: {scores}; chosen {tuned.seen_policy}")


def _offline_agreement(evaluator: Evaluator, validation: list[data.Query], strategy: str,
                       weights: BlendWeights, policy: str, tuned: bool) -> dict[str, Any]:
    """The personalized ``strategy`` at ``weights`` on every validation query, offline and
    through the engine: how far tuning's figures are from the engine's."""
    method = Method("offline agreement", weights, "dynamic", strategy, seen_policy=policy)
    engine = evaluator.ranks(method, validation, f"offline agreement ({strategy})")
    offline = evaluator.offline_ranks(method, validation)
    return {"queries": len(validation), "weights": "tuned" if tuned else "configured",
            "same_rank": float(np.mean([a == b for a, b in zip(engine, offline, strict=True)])),
            "engine_ndcg@10": float(metrics.per_query(engine)["ndcg@10"].mean()),
            "offline_ndcg@10": float(metrics.per_query(offline)["ndcg@10"].mean())}


def _order_strategies(evaluator: Evaluator, validation: list[data.Query], offered: list[str],
                      strategies: list[str], tuned: Tuned, progress: Callable[[str], None]
                      ) -> list[str]:
    """The strategies in the shipped order, each moved ahead where its personalized
    default's objective on every validation query beats the one ahead of it surely
    (``stable_order``); the first is the default from here on (its ablations, the leak bound)
    and what `auto` ships."""
    policy = tuned.seen_policy or "neutral"
    floors = _validation_floors(evaluator, validation, offered, tuned)
    # The engine's answers, not the offline blend's: the strategies are compared as served.
    ndcg = {s: metrics.per_query(evaluator.ranks(Method(
        f"strategy {s}", tuned.chosen[s][1], "dynamic", s, seen_policy=policy),
        validation, f"strategy {s}"))["ndcg@10"] for s in strategies}
    tuned.strategy_validation = {s: objective(v, validation, floors) for s, v in ndcg.items()}
    protocols = np.array([q.protocol for q in validation])
    shipped = [s for s in evaluator.services.settings.strategy_order if s in ndcg]
    ordered, tuned.strategy_overtakes = stable_order(
        [*shipped, *(s for s in strategies if s not in shipped)],
        lambda a, b: overtake_share(ndcg[a], ndcg[b], protocols, floors))
    tuned.strategy_order = [*ordered, *(s for s in BLEND_STRATEGIES if s not in ordered)]
    progress(f"strategies on validation: {tuned.strategy_validation}; overtakes "
             f"{tuned.strategy_overtakes}; `auto` prefers {tuned.strategy_order}")
    return ordered


def overtake_share(challenger: np.ndarray, incumbent: np.ndarray, protocols: np.ndarray,
                   floors: Floors, samples: int = ORDER_RESAMPLES, seed: int = 0,
                   tail: np.ndarray | None = None, tail_floor: float = 0.0) -> float:
    """The share of bootstrap resamples of the queries (paired) in which ``challenger``'s
    per-query NDCG@10 makes a better objective than ``incumbent``'s; with ``tail`` (a mask
    of the queries), the objective also holds those queries to ``tail_floor``."""
    rng = np.random.default_rng(seed)

    def value(ndcg: np.ndarray, idx: np.ndarray) -> float:
        score = _objective(ndcg[idx], protocols[idx], floors)
        return score if tail is None else score + shortfall(ndcg[idx][tail[idx]], tail_floor)

    wins = 0
    for _ in range(samples):
        idx = rng.integers(0, len(protocols), len(protocols))
        wins += value(challenger, idx) > value(incumbent, idx)
    return wins / samples


def stable_choice(incumbent: T, challengers: Sequence[T], share: Callable[[T, T], float],
                  value: Callable[[T], float], confidence: float = ORDER_CONFIDENCE) -> T:
    """``incumbent`` (what ships), unless challengers beat it in at least ``confidence`` of
    the resamples (``share(challenger, incumbent)``): then the one of those with the best
    ``value``. Near-tied candidates would otherwise swap on a rerun's noise."""
    sure = [c for c in challengers if share(c, incumbent) >= confidence]
    return max(sure, key=value) if sure else incumbent


def stable_order(start: Sequence[str], share: Callable[[str, str], float],
                 confidence: float = ORDER_CONFIDENCE) -> tuple[list[str], dict[str, float]]:
    """``start`` (the shipped order), each strategy moved ahead of the one before it where it
    beats it in at least ``confidence`` of the resamples (``share(challenger, incumbent)``);
    also each share asked, as "challenger > incumbent"."""
    order, asked = list(start), {}
    for _ in range(len(order) ** 2):  # enough passes to sort; a cycle cannot run on
        moved = False
        for i in range(len(order) - 1):
            ahead, behind = order[i], order[i + 1]
            key = f"{behind} > {ahead}"
            if key not in asked:
                asked[key] = share(behind, ahead)
            if asked[key] >= confidence:
                order[i], order[i + 1] = behind, ahead
                moved = True
        if not moved:
            break
    return order, asked


def _write(results: dict[str, Any], out_dir: Path, ranking_out: Path | None) -> None:
    """evaluation.json (with every arm's per-query ranks), the chosen ranking file, and the
    report with its plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # Compact: the per-query ranks make most of it, and the report is what people read.
    (out_dir / "evaluation.json").write_text(json.dumps(results, separators=(",", ":")))
    (ranking_out or out_dir / "ranking.json").write_text(
        json.dumps(results["ranking"], indent=2) + "\n")
    write_report(results, out_dir)


def _ranking(results: dict[str, Any], tuned: Tuned) -> dict[str, Any]:
    """The configuration the evaluation chose, in the ranking file's shape. A strategy the
    evaluated engines did not personalize keeps the shipped file's weights."""
    shipped = json.loads(SHIPPED_RANKING.read_text())
    chosen = tuned.chosen

    def table(name: str, index: int) -> dict[str, dict[str, float]]:
        return {s: ({t: float(getattr(chosen[s][index], t)) for t in WEIGHT_NAMES}
                    if s in chosen else shipped[name][s]) for s in BLEND_STRATEGIES}

    return {
        "chosen_by": f"`es-interest eval` on commit {results['commit']} "
                     f"({results['users']} MovieLens users, validation queries only)",
        "half_life_long_days": results["half_lives"][0],
        "half_life_short_days": results["half_lives"][1],
        "popularity_half_life_days": results["popularity_half_life_days"],
        "seen_policy": tuned.seen_policy,
        "embed_title_cleanup": results["embed_title_cleanup"],
        "strategy_order": tuned.strategy_order or shipped.get("strategy_order",
                                                             list(BLEND_STRATEGIES)),
        **(tuned.behaviour or {}),
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


def _ascend(evaluator: Evaluator, tuning: list[data.Query], strategy: str,
            weights: BlendWeights, terms: Sequence[str | tuple[str, ...]],
            policy: str | None = None, floors: Floors | None = None,
            profile: str = "dynamic") -> BlendWeights:
    """Coordinate ascent on validation: each term (or tuple of terms, searched jointly over
    their grids' product) with the others fixed (``Evaluator.ndcg``'s objective), the user's
    vectors from ``profile``."""
    grid = OFFLINE_GRID if evaluator.tunes_offline(strategy) else GRID
    for step in terms:
        names = (step,) if isinstance(step, str) else step
        # Without a user while no user term is weighed (the non-personalized default).
        personal = any(getattr(weights, t) for t in USER_TERMS if t not in names)
        user = None if set(names) <= {"popularity", "query"} and not personal else profile
        scored = []
        for values in itertools.product(*(grid[n] for n in names)):
            candidate = replace(weights, **dict(zip(names, values, strict=True)))
            score = evaluator.ndcg(Method("+".join(names), candidate, user, strategy,
                                          seen_policy=policy), tuning, floors)
            # Ties go to the smaller weights: a term must earn its place.
            scored.append((score, -sum(values), values))
        weights = replace(weights, **dict(zip(names, max(scored)[2], strict=True)))
    return weights


# The steps of ``_tune``: the content terms (the table for users without a behaviour vector),
# then behaviour beside them (the table for users with one).
CONTENT_STEPS: tuple[str | tuple[str, ...], ...] = (
    ("interest_long", "seen"), "interest_short", "seen", "seen_crowding", "seen", "ambiguity",
    "interest_long")
BEHAVIOUR_STEPS: tuple[str | tuple[str, ...], ...] = (
    ("behaviour", "seen"), "behaviour_short", "interest_long", "seen", "seen_crowding", "seen",
    "ambiguity", "behaviour", "query", "popularity")


def _tune_steps(evaluator: Evaluator, tuning: list[data.Query], strategy: str,
                weights: BlendWeights, steps: Sequence[str | tuple[str, ...]], policy: str,
                floors: Floors | None) -> BlendWeights:
    """``_ascend`` over ``steps``, the seen weights left out where ``policy`` gives seen
    documents no share (they would count for nothing)."""
    if policy not in SEEN_SHARE_POLICIES:
        steps = [t if isinstance(t, str) else tuple(n for n in t if n not in SEEN_WEIGHTS)
                 for t in steps if t not in SEEN_WEIGHTS]
    return _ascend(evaluator, tuning, strategy, weights, steps, policy, floors)


def _tune_content(evaluator: Evaluator, tuning: list[data.Query], strategy: str,
                  plain: BlendWeights, policy: str, floors: Floors | None) -> BlendWeights:
    """The content terms from the non-personalized default ``plain`` (CONTENT_STEPS)."""
    start = replace(plain, seen=0.0, ambiguity=START_AMBIGUITY)
    return _tune_steps(evaluator, tuning, strategy, start, CONTENT_STEPS, policy, floors)


def _tune(evaluator: Evaluator, tuning: list[data.Query], strategy: str,
          progress: Callable[[str], None], plain: BlendWeights | None = None,
          policy: str = "neutral", floors: Floors | None = None
          ) -> tuple[BlendWeights, BlendWeights]:
    """Popularity and the query vector (the non-personalized default; given as ``plain``
    where tuned already), then the content interest terms, the seen documents' weight, how
    knowing many of them turns it down (and the weight again, under that) and how specific
    queries turn the user terms down (the table for users without a behaviour vector, which
    searches without a user also take: its query vector and popularity stay the
    non-personalized default's), then behaviour, its short-term term, the long-term term, the
    seen weights, the ambiguity exponent, behaviour, the query vector and popularity (the
    table for users with one). Returns (without, with) behaviour.

    The query vector and popularity are tuned again beside behaviour because their best
    weights next to it need not be their best without a user (the controls, which share
    these weights, tell a better blend from personalization).

    Under a policy with a seen share (``neutral``, ``floor``) each user term's first step
    searches the seen weight with it:
    a user term alone pushes what the user knows down, the seen weight alone does nothing
    while no user term applies, so one at a time neither would ever be taken."""
    plain = plain or _ascend(evaluator, tuning, strategy, BlendWeights(1.0),
                             ("popularity", "query"))
    content = _tune_content(evaluator, tuning, strategy, plain, policy, floors)
    full = _tune_steps(evaluator, tuning, strategy, content, BEHAVIOUR_STEPS, policy, floors)
    progress(f"tuned on validation ({strategy}, seen {policy}): without behaviour {content}; "
             f"with {full}")
    return content, full


def _non_personalized(tuned: Tuned, offered: list[str]) -> list[Method]:
    """Every ranking the engine can give without a user."""
    methods = [Method("BM25", BlendWeights(1.0), None, offered[0])]
    for s in offered:
        methods += [Method(f"{BM25_POPULARITY} ({s})", tuned.bm25_popularity[s], None, s),
                    Method(f"{NON_PERSONALIZED} ({s})", tuned.plain[s], None, s)]
    return methods


def _comparator(evaluator: Evaluator, tuned: Tuned, offered: list[str],
                tuning: list[data.Query]) -> dict[str, dict[str, float]]:
    """5. Each non-personalized arm's NDCG@10 on each protocol's validation queries."""
    return {protocol: {m.name: evaluator.ndcg(m, [q for q in tuning if q.protocol == protocol])
                       for m in _non_personalized(tuned, offered)}
            for protocol in data.PROTOCOLS}


def best_arms(validation: dict[str, dict[str, float]]) -> dict[str, str]:
    """Per protocol, the arm with the best validation score: the comparator."""
    return {protocol: max(scores, key=lambda name: scores[name])
            for protocol, scores in validation.items()}


def _personalized(tuned: Tuned, strategy: str, controls: bool, ablations: bool
                  ) -> list[Method]:
    """The personalized default; with ``controls`` (the engine's default strategy) also the
    profile frozen at training's end and the item-prior controls, and with ``ablations``
    (there, on the first engine: the parts of one blend the engines share) the content and
    behaviour ablations and the other seen policies."""
    methods = [Method(f"{DEFAULT} ({strategy})", None, "dynamic", strategy, keep_hits=True)]
    if controls:
        methods += [Method(f"{FROZEN} ({strategy})", None, "frozen", strategy),
                    Method(f"{ITEM_PRIOR} ({strategy})", None, ITEM_PRIOR, strategy),
                    Method(f"{OTHER_USER} ({strategy})", None, OTHER_USER, strategy)]
    if not (controls and ablations):
        return methods
    content, full = tuned.chosen[strategy]
    plain = replace(full, interest_long=0.0, interest_short=0.0, behaviour=0.0, seen=0.0)
    other_policies = [Method(f"seen policy {policy} ({strategy})", weights[1], "dynamic",
                             strategy, seen_policy=policy)
                      for policy, weights in tuned.other_policies.get(strategy, {}).items()]
    return [
        *methods,
        Method(f"static content profile ({strategy})", replace(
            content, interest_long=content.interest_long or 1.0, interest_short=0.0),
            "static", strategy),
        Method(f"dynamic content profile ({strategy})", replace(
            content, interest_long=content.interest_long or 1.0, interest_short=0.0),
            "dynamic", strategy),
        Method(f"behaviour only ({strategy})", replace(plain, behaviour=full.behaviour or 1.0,
                                                       behaviour_short=full.behaviour_short),
               "dynamic", strategy),
        *other_policies,
    ]


def _score(evaluator: Evaluator, tuned: Tuned, offered: list[str], strategies: list[str],
           comparator: dict[str, str], corpus: Corpus, progress: Callable[[str], None],
           ablations: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """6. Every arm on each protocol's test queries, the tests, and the per-query ranks
    (``ablations``: the default strategy's ablations too, see ``_personalized``)."""
    split = corpus.split
    out: dict[str, Any] = {"protocols": {}, "weights": {}}
    per_query: dict[str, Any] = {}
    defaults: dict[str, dict[str, list[list[str]]]] = defaultdict(dict)
    default_strategy = strategies[0]
    for protocol in data.PROTOCOLS:
        queries = [q for q in split.test if q.protocol == protocol]
        tail = tail_targets(corpus, queries)
        methods = _non_personalized(tuned, offered)
        for s in strategies:
            methods += _personalized(tuned, s, controls=s == default_strategy,
                                     ablations=ablations)
        ranks: dict[str, list[int | None]] = {}
        for m in methods:
            ranks[m.name] = evaluator.ranks(m, queries, f"{protocol}: {m.name}")
            if m.keep_hits:
                defaults[protocol][m.strategy] = m.hits
        per = {name: metrics.per_query(r) for name, r in ranks.items()}
        strategy_of = {m.name: m.strategy if m.name != "BM25" else "-" for m in methods}
        comp = per[comparator[protocol]]["ndcg@10"]
        tests: dict[str, Any] = {}
        for s in strategies:
            ours = per[f"{DEFAULT} ({s})"]["ndcg@10"]
            entry: dict[str, Any] = {
                "vs_comparator": metrics.paired_test(ours, comp),
                "relative_gain": _gain(ours, comp),
                "harm": metrics.paired_test(comp, ours),
            }
            if s == default_strategy:
                others = {n.removeprefix("seen policy ").removesuffix(f" ({s})"): n
                          for n in per if n.startswith("seen policy ")}
                entry.update({
                    "vs_item_prior": metrics.paired_test(ours, per[f"{ITEM_PRIOR} ({s})"][
                        "ndcg@10"]),
                    "gain_vs_item_prior": _gain(ours, per[f"{ITEM_PRIOR} ({s})"]["ndcg@10"]),
                    "vs_other_user": metrics.paired_test(ours, per[f"{OTHER_USER} ({s})"][
                        "ndcg@10"]),
                    # The product's profile, current at each query, against the same
                    # blend with the profile frozen when training ended.
                    "dynamic_vs_static": metrics.paired_test(ours, per[f"{FROZEN} ({s})"][
                        "ndcg@10"]),
                })
                if f"dynamic content profile ({s})" in per:
                    entry["content_dynamic_vs_static"] = metrics.paired_test(
                        per[f"dynamic content profile ({s})"]["ndcg@10"],
                        per[f"static content profile ({s})"]["ndcg@10"])
                if others:
                    entry["vs_other_seen_policies"] = {
                        policy: metrics.paired_test(ours, per[name]["ndcg@10"])
                        for policy, name in others.items()}
                if tail.any():
                    entry["tail"] = {"queries": int(tail.sum()),
                                     "ours": float(ours[tail].mean()),
                                     "comparator": float(comp[tail].mean()),
                                     "relative_gain": _gain(ours[tail], comp[tail]),
                                     "vs_comparator": metrics.paired_test(ours[tail],
                                                                          comp[tail])}
            tests[s] = entry
        table = {name: {"strategy": strategy_of[name],
                        **{k: {"mean": float(v.mean()), "ci95": metrics.bootstrap_ci(v)}
                           for k, v in entry.items()}}
                 for name, entry in per.items()}
        for name, entry in per.items():
            progress(f"  {protocol} {name}: NDCG@10 {entry['ndcg@10'].mean():.4f}")
        out["protocols"][protocol] = {"queries": len(queries), "comparator":
                                      comparator[protocol], "methods": table, "tests": tests}
        per_query[protocol] = {
            "queries": [[q.user_id, q.movie_id, q.text, q.timestamp] for q in queries],
            "tail": tail.tolist(), "ranks": ranks}
    for s in strategies:
        out["weights"][s] = {"without_behaviour": asdict(tuned.chosen[s][0]),
                             "with_behaviour": asdict(tuned.chosen[s][1])}
    by_strategy = {s: float(np.mean([out["protocols"][p]["methods"][f"{DEFAULT} ({s})"]
                                     ["ndcg@10"]["mean"] for p in data.PROTOCOLS]))
                   for s in strategies}
    out["strategy_ranking"] = sorted(by_strategy, key=lambda k: -by_strategy[k])
    if {"script_score", "knn_linear"} <= set(strategies):
        out["kendall_tau_script_vs_knn"] = {
            p: metrics.mean_kendall_tau(defaults[p]["script_score"], defaults[p]["knn_linear"])
            for p in data.PROTOCOLS}
    return out, per_query


def time_buckets(queries: Sequence[data.Query], count: int) -> list[list[data.Query]]:
    """The queries in time order, cut into ``count`` buckets of (nearly) equal size."""
    ordered = sorted(queries, key=lambda q: (q.timestamp, q.user_id, q.movie_id, q.protocol))
    return [list(part) for part in np.array_split(np.array(ordered, dtype=object), count)
            if len(part)]


def _leak_bound(evaluator: Evaluator, tuned: Tuned, offered: list[str], strategy: str,
                comparator: dict[str, str], corpus: Corpus, scored: dict[str, Any],
                half_lives: tuple[float, float], progress: Callable[[str], None]
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The test queries again, the default and the comparator only, with documents'
    popularity and behaviour vectors learned from the events before each time bucket's first
    query (what the service knew then), against the main figures (learned from every
    training event, some after the query). Leaves the engine at the last bucket's state."""
    services = evaluator.services
    arms = {m.name: m for m in _non_personalized(tuned, offered)}
    default = Method(f"{DEFAULT} ({strategy})", None, "dynamic", strategy)
    ranks: dict[tuple[str, str, str, int, str], tuple[int | None, int | None]] = {}
    for bucket in progress_bar(time_buckets(corpus.split.test, LEAK_BUCKETS),
                               desc="leak bound", unit="bucket", leave=False):
        before_ms = bucket[0].timestamp * 1000
        popularity.rebuild(services, before_ms)
        behaviour.train(services, refold=False, before_ms=before_ms)
        docs = fetch_doc_vectors(services, corpus.doc_vectors, fresh=True)
        past = Evaluator(services, {"dynamic": query_time_profiles(corpus, docs, half_lives,
                                                                   bucket)})
        for protocol in data.PROTOCOLS:
            queries = [q for q in bucket if q.protocol == protocol]
            if not queries:
                continue
            personal = past.ranks(default, queries, f"past only: {protocol}")
            plain = past.ranks(arms[comparator[protocol]], queries,
                               f"past only: {protocol} comparator")
            for q, a, b in zip(queries, personal, plain, strict=True):
                ranks[(q.user_id, q.movie_id, q.text, q.timestamp, q.protocol)] = (a, b)
    out: dict[str, Any] = {"buckets": LEAK_BUCKETS, "limit": LEAK_LIMIT, "protocols": {}}
    per_query: dict[str, Any] = {}
    for protocol in data.PROTOCOLS:
        queries = [q for q in corpus.split.test if q.protocol == protocol]
        pairs = [ranks[(q.user_id, q.movie_id, q.text, q.timestamp, q.protocol)]
                 for q in queries]
        ours = metrics.per_query([a for a, _ in pairs])["ndcg@10"]
        theirs = metrics.per_query([b for _, b in pairs])["ndcg@10"]
        main = scored["protocols"][protocol]
        main_gain = main["tests"][strategy]["relative_gain"]
        gain = _gain(ours, theirs)
        out["protocols"][protocol] = {
            "ours": {"mean": float(ours.mean()), "ci95": metrics.bootstrap_ci(ours)},
            "comparator": {"mean": float(theirs.mean()), "ci95": metrics.bootstrap_ci(theirs)},
            "relative_gain": gain, "vs_comparator": metrics.paired_test(ours, theirs),
            "harm": metrics.paired_test(theirs, ours),
            "main_ours": main["methods"][default.name]["ndcg@10"]["mean"],
            "main_comparator": main["methods"][comparator[protocol]]["ndcg@10"]["mean"],
            "main_relative_gain": main_gain,
            # How much of the main gain the later events explain (gain points).
            "leak": None if gain is None or main_gain is None else main_gain - gain}
        per_query[protocol] = {"default": [a for a, _ in pairs],
                               "comparator": [b for _, b in pairs]}
        progress(f"  past only, {protocol}: {ours.mean():.4f} vs {theirs.mean():.4f} "
                 f"(main {out['protocols'][protocol]['main_ours']:.4f} vs "
                 f"{out['protocols'][protocol]['main_comparator']:.4f})")
    # A leak inflates the main gain; a negative one (the past alone did better) does not.
    out["past_only_main"] = any((p["leak"] or 0.0) > LEAK_LIMIT
                                for p in out["protocols"].values())
    return out, per_query


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
