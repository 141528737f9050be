"""The query rewrite: one engine request that blends text relevance with vector similarities.

    final = a·norm(bm25) + b·sim(q, d) + c·sim(u_long, d) + d·sim(u_short, d)

sim(x, d) = (1 + cos(x, d)) / 2, in [0, 1], the score the engines give a cosine kNN hit.
norm(bm25) = bm25 / (the query's best BM25 score over the index, with the same filters), also in
[0, 1], so a weight means the same for every query; the best score comes from one cheap request
(one hit, no source), cached in Redis with the query's embedding.

Strategies:

- ``script_score`` (where Painless runs): candidates are the BM25 matches + the kNN top-k of
  the query vector + the kNN top-k of the long-term interest vector among documents matching
  the query's words (kNN clauses wrapped in a
  zero-boost ``constant_score``, so ``_score`` stays pure BM25, and the user terms apply to
  documents with a BM25 match, as in ``knn_linear``); one Painless script whose
  source is a constant of the engine module scores every candidate exactly. Vectors and weights
  arrive as params.
- ``linear_retriever`` (Elasticsearch 8.18+): one ``linear`` retriever over a BM25 retriever
  and one ``knn`` retriever per vector, each min-max normalized over the top
  ``rank_window_size`` hits and weighted (a, b, c, d); the user-vector retrievers search only
  documents matching the query's words. No script, and each term is calibrated per query; a
  document outside a vector's window gets that term's minimum (0).
- ``knn_linear`` (no scripts, any engine): the BM25 clause (boost a / best BM25) plus one kNN
  clause per vector (boost b, c, d); the engine adds the clause scores. The user-vector
  clauses search only documents matching the query's words, so personalization re-orders
  what the query found. Difference from the exact blend: a vector's term counts only for
  documents in that vector's top-k candidates (0 elsewhere).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from plugin.caches import USER_VECTORS_PREFIX
from plugin.config import BLEND_STRATEGIES
from plugin.engine import JSON
from plugin.interest import UserInterest, interest_vector
from plugin.services import Services

TEXT_FIELDS = ["title^2", "tags.text", "body"]
FILTER_FIELDS = ("tags", "doc_id")
QUERY_CACHE_PREFIX = "es-interest:query:"


@dataclass(frozen=True)
class BlendWeights:
    bm25: float = 1.0
    query: float = 1.0
    interest_long: float = 1.5
    interest_short: float = 0.5


@dataclass
class UserVectors:
    long: list[float] | None = None
    short: list[float] | None = None

    @property
    def empty(self) -> bool:
        return self.long is None and self.short is None


@dataclass(frozen=True)
class SearchParams:
    query: str
    user_id: str | None = None
    size: int = 10
    offset: int = 0
    filters: Mapping[str, Sequence[str]] = field(default_factory=dict)
    weights: BlendWeights = BlendWeights()
    strategy: str | None = None  # None: the configured default
    explain: bool = False
    use_cache: bool = True
    # Given vectors instead of the stored ones (offline evaluation of other profiles).
    vectors: UserVectors | None = None


@dataclass
class SearchResult:
    hits: list[JSON]
    total: int
    personalized: bool
    reason: str | None
    strategy: str
    took_ms: float
    request: JSON = field(repr=False, default_factory=dict)


# -- query and user inputs, cached ------------------------------------------------------------


def text_query(query: str, boost: float = 1.0) -> JSON:
    return {"multi_match": {"query": query, "fields": TEXT_FIELDS, "boost": boost}}


def filter_clauses(filters: Mapping[str, Sequence[str]]) -> list[JSON]:
    return [{"terms": {name: list(values)}} for name, values in filters.items()]


def _pack(vector: Sequence[float]) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def _unpack(text: str) -> list[float]:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(float).tolist()


def query_inputs(services: Services, query: str, filters: Mapping[str, Sequence[str]],
                 use_cache: bool = True) -> tuple[list[float], float]:
    """The query's embedding and its best BM25 score, from Redis when cached."""
    settings = services.settings
    key = QUERY_CACHE_PREFIX + hashlib.sha256(json.dumps(
        [settings.docs_alias, services.embedder.model_name, query, sorted(filters.items())],
    ).encode()).hexdigest()
    if use_cache:
        try:
            cached = services.redis.get(key)
        except Exception:  # a cache fault only costs the work below
            cached = None
        if cached:
            data = json.loads(cached)
            return _unpack(data["vector"]), float(data["max_bm25"])
    vector = services.embedder.encode_one(query).tolist()
    body: JSON = {"size": 1, "_source": False, "track_total_hits": False,
                  "query": {"bool": {"must": [text_query(query)],
                                     "filter": filter_clauses(filters)}}}
    response = services.engine.search(settings.docs_alias, body)
    max_bm25 = float(response["hits"].get("max_score") or 0.0)
    if use_cache:
        with contextlib.suppress(Exception):
            services.redis.set(key, json.dumps({"vector": _pack(vector), "max_bm25": max_bm25}),
                               ex=int(settings.query_cache_ttl_s))
    return vector, max_bm25


def user_vectors(services: Services, user_id: str) -> UserVectors:
    """The user's unit vectors (Redis, else the engine within the time budget); may raise."""
    key = USER_VECTORS_PREFIX + user_id
    cached = services.redis.get(key)
    if cached:
        data = json.loads(cached)
        return UserVectors(*(None if data[k] is None else _unpack(data[k])
                             for k in ("long", "short")))
    found = services.engine.get_source(services.settings.interests_alias, user_id,
                                       timeout_s=services.settings.user_vector_budget_ms / 1000,
                                       exclude=["interest_long", "interest_short"])
    vectors = UserVectors()
    if found is not None:
        user = UserInterest.from_source(found)
        long, short = interest_vector(user.long), interest_vector(user.short)
        vectors = UserVectors(None if long is None else long.tolist(),
                              None if short is None else short.tolist())
    services.redis.set(key, json.dumps({
        "long": None if vectors.long is None else _pack(vectors.long),
        "short": None if vectors.short is None else _pack(vectors.short),
    }), ex=int(services.settings.user_cache_ttl_s))
    return vectors


# -- the two request shapes -------------------------------------------------------------------


def _candidates(params: SearchParams, services: Services) -> int:
    return max(params.offset + params.size, services.settings.knn_candidates)


def script_score_request(services: Services, params: SearchParams, query_vector: list[float],
                         max_bm25: float, user: UserVectors) -> JSON:
    engine = services.engine
    k = _candidates(params, services)
    recall = [engine.knn_query("embedding", query_vector, k)]
    if user.long is not None:
        recall.append(engine.knn_query("embedding", user.long, k,
                                       filter_query=_matching(params)))
    w = params.weights
    script_params = {
        "a": w.bm25, "b": w.query, "max_bm25": max_bm25 if max_bm25 > 0 else 1.0,
        "q": query_vector,
        "c": w.interest_long if user.long is not None else 0.0,
        "ul": user.long if user.long is not None else query_vector,
        "d": w.interest_short if user.short is not None else 0.0,
        "us": user.short if user.short is not None else query_vector,
    }
    return {
        "size": params.size, "from": params.offset,
        "query": {"script_score": {
            "query": {"bool": {
                "should": [text_query(params.query)]
                + [{"constant_score": {"filter": clause, "boost": 0.0}} for clause in recall],
                "filter": filter_clauses(params.filters),
                "minimum_should_match": 1,
            }},
            "script": {"source": engine.blend_script("embedding"), "params": script_params},
        }},
    }


def knn_linear_request(services: Services, params: SearchParams, query_vector: list[float],
                       max_bm25: float, user: UserVectors) -> JSON:
    engine = services.engine
    w = params.weights
    filters = filter_clauses(params.filters)
    body: JSON = {
        "size": params.size, "from": params.offset,
        "query": {"bool": {"should": [text_query(
            params.query, w.bm25 / max_bm25 if max_bm25 > 0 else w.bm25)],
            "filter": filters, "minimum_should_match": 1}},
    }
    k = _candidates(params, services)
    if w.query > 0:
        engine.add_knn(body, field_name="embedding", vector=query_vector, k=k,
                       num_candidates=2 * k, boost=w.query,
                       filter_query={"bool": {"filter": filters}} if filters else None)
    for vector, weight in ((user.long, w.interest_long), (user.short, w.interest_short)):
        if vector is not None and weight > 0:
            engine.add_knn(body, field_name="embedding", vector=vector, k=k,
                           num_candidates=2 * k, boost=weight, filter_query=_matching(params))
    return body


def linear_retriever_request(services: Services, params: SearchParams,
                             query_vector: list[float], max_bm25: float,
                             user: UserVectors) -> JSON:
    engine = services.engine
    w = params.weights
    filters = filter_clauses(params.filters)
    window = _candidates(params, services)
    text = {"bool": {"must": [text_query(params.query)], "filter": filters}}
    terms: list[tuple[JSON, float]] = [({"standard": {"query": text}}, w.bm25)]
    if w.query > 0:
        terms.append((engine.knn_retriever(
            "embedding", query_vector, window,
            filter_query={"bool": {"filter": filters}} if filters else None), w.query))
    for vector, weight in ((user.long, w.interest_long), (user.short, w.interest_short)):
        if vector is not None and weight > 0:
            terms.append((engine.knn_retriever("embedding", vector, window,
                                               filter_query=_matching(params)), weight))
    return {
        "size": params.size, "from": params.offset,
        "retriever": {"linear": {
            "retrievers": [{"retriever": retriever, "weight": weight, "normalizer": "minmax"}
                           for retriever, weight in terms],
            "rank_window_size": window,
        }},
    }


def _matching(params: SearchParams) -> JSON:
    """Documents that match the query's words (and filters): where user vectors re-rank."""
    return {"bool": {"must": [text_query(params.query)],
                     "filter": filter_clauses(params.filters)}}


# -- search -----------------------------------------------------------------------------------


REQUEST_BUILDERS = {
    "script_score": script_score_request,
    "linear_retriever": linear_retriever_request,
    "knn_linear": knn_linear_request,
}
# What a strategy needs from the engine, to say so when it is missing.
STRATEGY_NEEDS = {"script_score": "Painless", "linear_retriever": "the `linear` retriever "
                  "(Elasticsearch 8.18+)", "knn_linear": "kNN search"}


def available_strategies(services: Services) -> list[str]:
    """The strategies this engine can run, best first (BLEND_STRATEGIES' order)."""
    engine = services.engine
    offered = {"script_score": engine.has_painless(),
               "linear_retriever": engine.has_linear_retriever(services.settings.docs_alias),
               "knn_linear": True}
    return [name for name in BLEND_STRATEGIES if offered[name]]


def default_strategy(services: Services) -> str:
    configured = services.settings.blend_strategy
    if configured in BLEND_STRATEGIES:
        return configured
    return available_strategies(services)[0]


def search(services: Services, params: SearchParams) -> SearchResult:
    started = time.perf_counter()
    strategy = params.strategy or default_strategy(services)
    available = available_strategies(services)
    if strategy not in available:
        raise ValueError(f"strategy {strategy!r} needs {STRATEGY_NEEDS[strategy]}, which this "
                         f"engine lacks; available here: {', '.join(available)}")
    query_vector, max_bm25 = query_inputs(services, params.query, params.filters,
                                          params.use_cache)
    user = UserVectors()
    reason: str | None = "no user_id"
    if params.vectors is not None:
        user, reason = params.vectors, None if not params.vectors.empty else "empty vectors"
    elif params.user_id:
        budget_ms = services.settings.user_vector_budget_ms
        loading = time.perf_counter()
        try:
            user = user_vectors(services, params.user_id)
            reason = "user has no interest vector yet" if user.empty else None
        except Exception as exc:  # a personalization fault must never fail the search
            reason = f"user vectors unavailable ({type(exc).__name__}); not personalized"
        spent_ms = (time.perf_counter() - loading) * 1000
        if reason is None and spent_ms > budget_ms:
            user = UserVectors()
            reason = (f"user vectors took {spent_ms:.1f} ms, over the {budget_ms:g} ms budget; "
                      "not personalized")
    body = REQUEST_BUILDERS[strategy](services, params, query_vector, max_bm25, user)
    response = services.engine.search(services.settings.docs_alias, body)
    hits = _hits(services, params, response, query_vector, max_bm25, user)
    total = response["hits"]["total"]
    return SearchResult(hits, int(total["value"] if isinstance(total, dict) else total),
                        not user.empty, reason, strategy,
                        (time.perf_counter() - started) * 1000.0, body)


def _sim(vector: list[float] | None, embedding: np.ndarray) -> float | None:
    if vector is None:
        return None
    return round((1.0 + float(np.dot(np.asarray(vector), embedding))) / 2.0, 6)


def _hits(services: Services, params: SearchParams, response: JSON, query_vector: list[float],
          max_bm25: float, user: UserVectors) -> list[JSON]:
    raw = response["hits"]["hits"]
    bm25: dict[str, float] = {}
    if params.explain and raw:
        # Pure BM25 of just these hits: the one component no similarity can give back.
        ids = [h["_id"] for h in raw]
        exact = services.engine.search(services.settings.docs_alias, {
            "size": len(ids), "_source": False,
            "query": {"bool": {"must": [text_query(params.query)],
                               "filter": [{"ids": {"values": ids}}]}}})
        bm25 = {h["_id"]: float(h["_score"]) for h in exact["hits"]["hits"]}
    out = []
    for hit in raw:
        source = hit.get("_source", {})
        embedding = np.asarray(source.pop("embedding", []), dtype=np.float64)
        components: JSON = {"final": hit.get("_score")}
        if embedding.size:
            components.update(query=_sim(query_vector, embedding),
                              interest_long=_sim(user.long, embedding),
                              interest_short=_sim(user.short, embedding))
        if params.explain:
            raw_bm25 = bm25.get(hit["_id"], 0.0)
            components["bm25"] = round(raw_bm25 / max_bm25, 6) if max_bm25 > 0 else 0.0
        out.append({"id": hit["_id"], "score": hit.get("_score"), "title": source.get("title"),
                    "tags": source.get("tags", []), "components": components})
    return out


def with_weights(params: SearchParams, **overrides: float) -> SearchParams:
    return replace(params, weights=replace(params.weights, **overrides))
