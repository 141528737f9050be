"""The query rewrite: one engine request that blends text relevance, popularity and vector
similarities.

    final = a·norm(bm25) + b·sim(q, d) + p·log10(1 + popularity(d))
            + c·sim(u_long, d) + d·sim(u_short, d) + e·sim(u_behaviour, d_behaviour)

sim(x, d) = (1 + cos(x, d)) / 2, in [0, 1], the score the engines give a cosine kNN hit.
norm(bm25) = bm25 / (the query's best BM25 score over the index, with the same filters), also in
[0, 1], so a weight means the same for every query; the best score comes from one cheap request
(one hit, no source), cached in Redis with the query's embedding. popularity(d) is the decayed
sum of the document's interactions (plugin/pipeline/popularity.py), a script-free
``field_value_factor``. The behaviour term compares the user's and the document's behaviour
(collaborative) vectors (plugin/pipeline/behaviour.py) where both exist in the same version.
The weights come from plugin/ranking.json, as `make eval` chose them; a user with no
behaviour vector gets the table tuned without one.

User terms apply to documents that match the query's words, so personalization re-orders what
the query found. Every vector term covers up to ``personal_candidates`` (1,000) documents
exactly, nearest first: below that cap no document loses a term because it fell outside a
top-k (no cliff); past it a document gets the term's smallest value.

Strategies:

- ``script_score`` (where Painless runs): candidates are the BM25 matches + the kNN top-k of
  the query vector + the user's nearest matches (kNN clauses wrapped in a zero-boost
  ``constant_score``, so ``_score`` stays pure BM25); one Painless script whose source is a
  constant of the engine module scores every candidate exactly on the content terms. Vectors
  and weights arrive as params. Popularity and behaviour clauses add to the script's score.
- ``linear_retriever`` (Elasticsearch 8.18+): one ``linear`` retriever over a BM25 retriever,
  a popularity retriever and one ``knn`` retriever per vector, each min-max normalized over
  its top ``rank_window_size`` hits (calibrated per query) and weighted. No script.
- ``knn_linear`` (no scripts, any engine): the BM25 clause (boost a / best BM25) with the
  popularity clause, plus one kNN clause per vector; the engine adds the clause scores, the
  same sum as ``script_score`` (the tests check that the two rank alike).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import cachetools
import numpy as np

from plugin.caches import behaviour_version_key, user_vectors_key
from plugin.config import BLEND_STRATEGIES
from plugin.documents import BEHAVIOUR_FIELD, POPULARITY_FIELD
from plugin.engine import JSON
from plugin.interest import HorizonState, UserInterest, interest_vector
from plugin.services import Services

TEXT_FIELDS = ["title^2", "tags.text", "body"]
# What a hit shows. The documents' vectors come back only with ``explain`` (each term's
# similarity is computed from them): sending them cost the engine about 3.5 ms a request.
HIT_FIELDS = ["title", "tags", POPULARITY_FIELD]
FILTER_FIELDS = ("tags", "doc_id")


@dataclass(frozen=True)
class BlendWeights:
    """One weight per term (BLEND_TERMS); the shipped ones come from the ranking file."""

    bm25: float = 1.0
    query: float = 0.0
    popularity: float = 0.0
    interest_long: float = 0.0
    interest_short: float = 0.0
    behaviour: float = 0.0
    # How much a specific query turns personalization down: the user terms are scaled by
    # words^-ambiguity (query length, the classic sign of specificity: "comedy" leaves the
    # choice to the user, "dark comedy about a heist" much less). 0: every query alike.
    ambiguity: float = 0.0


@dataclass
class UserVectors:
    long: list[float] | None = None
    short: list[float] | None = None
    behaviour: list[float] | None = None
    behaviour_version: str | None = None

    @property
    def empty(self) -> bool:
        return self.long is None and self.short is None and self.behaviour is None


@dataclass(frozen=True)
class SearchParams:
    query: str
    user_id: str | None = None
    size: int = 10
    offset: int = 0
    filters: Mapping[str, Sequence[str]] = field(default_factory=dict)
    weights: BlendWeights | None = None  # None: the configured ones for the strategy
    overrides: Mapping[str, float] = field(default_factory=dict)
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
    # The weights the request used (user terms already scaled for the query's ambiguity).
    weights: BlendWeights | None = None


# -- query and user inputs, cached ------------------------------------------------------------


def text_query(query: str, boost: float = 1.0) -> JSON:
    return {"multi_match": {"query": query, "fields": TEXT_FIELDS, "boost": boost}}


def filter_clauses(filters: Mapping[str, Sequence[str]]) -> list[JSON]:
    return [{"terms": {name: list(values)}} for name, values in filters.items()]


def _pack(vector: Sequence[float]) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def _unpack(text: str) -> list[float]:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(float).tolist()


@dataclass(frozen=True)
class QueryInputs:
    vector: list[float]
    max_bm25: float
    words: int  # distinct words of the query

    def personal_scale(self, exponent: float) -> float:
        """The user terms' factor: 1 for a one-word query, less for a longer one."""
        return float(max(1, self.words) ** -exponent) if exponent > 0 else 1.0


# Requests sent while this thread does other work (a few at a time per process).
_BACKGROUND = ThreadPoolExecutor(max_workers=8, thread_name_prefix="es-interest-search")


def query_inputs(services: Services, query: str, filters: Mapping[str, Sequence[str]],
                 use_cache: bool = True, need_max_bm25: bool = True) -> QueryInputs:
    """The query's embedding and best BM25 score (from Redis when cached), and its length.

    ``need_max_bm25`` False skips the best-BM25 request where nothing divides by it (the
    ``linear`` retriever normalizes BM25 itself); ``max_bm25`` is then 0 unless cached.
    """
    settings = services.settings
    key = settings.redis_key("query", hashlib.sha256(json.dumps(
        [settings.docs_alias, services.embedder.model_name, query, sorted(filters.items())],
    ).encode()).hexdigest())
    vector: list[float] | None = None
    max_bm25: float | None = None
    if use_cache:
        try:
            cached = services.redis.get(key)
        except Exception:  # a cache fault only costs the work below
            cached = None
        if cached:
            data = json.loads(cached)
            vector, max_bm25 = _unpack(data["vector"]), data.get("max_bm25")
            if max_bm25 is not None or not need_max_bm25:
                return QueryInputs(vector, float(max_bm25 or 0.0), _words(query))
    best = None
    if need_max_bm25:
        text = {"bool": {"must": [text_query(query)], "filter": filter_clauses(filters)}}
        body: JSON = {"size": 1, "_source": False, "track_total_hits": False, "query": text}
        # The engine answers while the model encodes: an uncached query waits for the slower.
        best = _BACKGROUND.submit(services.engine.search, settings.docs_alias, body)
    if vector is None:
        vector = services.embedder.encode_one(query).tolist()
    if best is not None:
        max_bm25 = float(best.result()["hits"].get("max_score") or 0.0)
    if use_cache:
        with contextlib.suppress(Exception):
            services.redis.set(key, json.dumps({"vector": _pack(vector), "max_bm25": max_bm25}),
                               ex=int(settings.query_cache_ttl_s))
    return QueryInputs(vector, float(max_bm25 or 0.0), _words(query))


def _words(query: str) -> int:
    return len(set(re.findall(r"\w+", query.lower())))


def vectors_of(user: UserInterest) -> UserVectors:
    """A user's unit vectors, from the exact state of their interest document."""
    def unit(state: HorizonState | None) -> list[float] | None:
        vector = None if state is None else interest_vector(state)
        return None if vector is None else vector.tolist()

    return UserVectors(unit(user.long), unit(user.short), unit(user.behaviour),
                       user.behaviour_version)


def user_vectors(services: Services, user_id: str) -> UserVectors:
    """The user's unit vectors (Redis, else the engine within the time budget); may raise."""
    key = user_vectors_key(services.settings, user_id)
    cached = services.redis.get(key)
    if cached:
        data = json.loads(cached)
        cached_long, cached_short, cached_behaviour = (
            None if data.get(k) is None else _unpack(data[k])
            for k in ("long", "short", "behaviour"))
        return UserVectors(cached_long, cached_short, cached_behaviour,
                           data.get("behaviour_version"))
    found = services.engine.get_source(services.settings.interests_alias, user_id,
                                       timeout_s=services.settings.user_vector_budget_ms / 1000)
    vectors = UserVectors() if found is None else vectors_of(UserInterest.from_source(found))
    services.redis.set(key, json.dumps({
        "long": None if vectors.long is None else _pack(vectors.long),
        "short": None if vectors.short is None else _pack(vectors.short),
        "behaviour": None if vectors.behaviour is None else _pack(vectors.behaviour),
        "behaviour_version": vectors.behaviour_version,
    }), ex=int(services.settings.user_cache_ttl_s))
    return vectors


_VERSIONS: cachetools.TTLCache[str, str | None] = cachetools.TTLCache(64, 10.0)


def behaviour_version(services: Services) -> str | None:
    """The documents' behaviour-vector version (cached for seconds per process)."""
    key = behaviour_version_key(services.settings)
    if key not in _VERSIONS:
        raw = services.redis.get(key)
        _VERSIONS[key] = None if raw is None else (
            raw.decode() if isinstance(raw, bytes) else str(raw))
    return _VERSIONS[key]


def popularity_clause(weight: float) -> JSON:
    """``weight * log10(1 + popularity)``, 0 for documents without: script-free on every
    engine (field_value_factor is core; rank_feature needs a module not every build has)."""
    return {"function_score": {
        "query": {"exists": {"field": POPULARITY_FIELD}},
        "functions": [{"field_value_factor": {"field": POPULARITY_FIELD, "modifier": "log1p",
                                              "missing": 0}}],
        "boost_mode": "replace", "boost": weight}}


# -- the request shapes ----------------------------------------------------------------------


def _candidates(params: SearchParams, services: Services) -> int:
    return max(params.offset + params.size, services.settings.knn_candidates)


def _personal_k(params: SearchParams, services: Services) -> int:
    """How many documents a vector term covers exactly (nearest first): past this cap a
    document gets the term's smallest value; below it, no document loses a term."""
    return max(params.offset + params.size, services.settings.personal_candidates)


def _user_terms(user: UserVectors, w: BlendWeights) -> list[tuple[str, list[float], float]]:
    """(field, vector, weight) of each user term that applies."""
    terms = [("embedding", user.long, w.interest_long), ("embedding", user.short, w.interest_short),
             (BEHAVIOUR_FIELD, user.behaviour, w.behaviour)]
    return [(f, v, weight) for f, v, weight in terms if v is not None and weight > 0]


def _text_with_popularity(params: SearchParams, boost: float, w: BlendWeights) -> JSON:
    """The query's words (BM25 scaled by ``boost``) plus the popularity term on matches."""
    clause: JSON = {"bool": {"must": [text_query(params.query, boost)]}}
    if w.popularity > 0:
        clause["bool"]["should"] = [popularity_clause(w.popularity)]
    return clause


def script_score_request(services: Services, params: SearchParams, w: BlendWeights,
                         query_vector: list[float], max_bm25: float, user: UserVectors) -> JSON:
    engine = services.engine
    k = _candidates(params, services)
    recall = [engine.knn_query("embedding", query_vector, k)]
    if user.long is not None:
        recall.append(engine.knn_query("embedding", user.long, _personal_k(params, services),
                                       filter_query=_matching(params)))
    script_params = {
        "a": w.bm25, "b": w.query, "max_bm25": max_bm25 if max_bm25 > 0 else 1.0,
        "q": query_vector,
        "c": w.interest_long if user.long is not None else 0.0,
        "ul": user.long if user.long is not None else query_vector,
        "d": w.interest_short if user.short is not None else 0.0,
        "us": user.short if user.short is not None else query_vector,
    }
    scored: JSON = {"script_score": {
        "query": {"bool": {
            "should": [text_query(params.query)]
            + [{"constant_score": {"filter": clause, "boost": 0.0}} for clause in recall],
            "filter": filter_clauses(params.filters),
            "minimum_should_match": 1,
        }},
        "script": {"source": engine.blend_script("embedding"), "params": script_params},
    }}
    # Popularity and behaviour live outside the script (the script reads one vector field
    # that every document has); their clauses add to the script's score on query matches.
    extra: list[JSON] = []
    if w.popularity > 0:
        extra.append({"bool": {"filter": [_matching(params)],
                               "should": [popularity_clause(w.popularity)]}})
    if user.behaviour is not None and w.behaviour > 0:
        extra.append(engine.knn_query(BEHAVIOUR_FIELD, user.behaviour,
                                      _personal_k(params, services),
                                      filter_query=_matching(params), boost=w.behaviour))
    query = {"bool": {"must": [scored], "should": extra}} if extra else scored
    return {"size": params.size, "from": params.offset, "query": query}


def knn_linear_request(services: Services, params: SearchParams, w: BlendWeights,
                       query_vector: list[float], max_bm25: float, user: UserVectors) -> JSON:
    engine = services.engine
    filters = filter_clauses(params.filters)
    text = _text_with_popularity(params, w.bm25 / max_bm25 if max_bm25 > 0 else w.bm25, w)
    body: JSON = {
        "size": params.size, "from": params.offset,
        "query": {"bool": {"should": [text], "filter": filters, "minimum_should_match": 1}},
    }
    personal = _personal_k(params, services)
    if w.query > 0:
        engine.add_knn(body, field_name="embedding", vector=query_vector, k=personal,
                       num_candidates=personal, boost=w.query,
                       filter_query={"bool": {"filter": filters}} if filters else None)
    for field_name, vector, weight in _user_terms(user, w):
        engine.add_knn(body, field_name=field_name, vector=vector, k=personal,
                       num_candidates=personal, boost=weight, filter_query=_matching(params))
    return body


def linear_retriever_request(services: Services, params: SearchParams, w: BlendWeights,
                             query_vector: list[float], max_bm25: float,
                             user: UserVectors) -> JSON:
    engine = services.engine
    filters = filter_clauses(params.filters)
    window = _personal_k(params, services)
    text = {"bool": {"must": [text_query(params.query)], "filter": filters}}
    terms: list[tuple[JSON, float]] = [({"standard": {"query": text}}, w.bm25)]
    if w.query > 0:
        terms.append((engine.knn_retriever(
            "embedding", query_vector, window,
            filter_query={"bool": {"filter": filters}} if filters else None), w.query))
    if w.popularity > 0:
        terms.append(({"standard": {"query": {"bool": {
            "filter": [_matching(params)], "should": [popularity_clause(1.0)]}}}},
            w.popularity))
    for field_name, vector, weight in _user_terms(user, w):
        terms.append((engine.knn_retriever(field_name, vector, window,
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


def configured_weights(services: Services, strategy: str, user: UserVectors) -> BlendWeights:
    """The shipped weights (plugin/ranking.json): with the behaviour term where the user has
    a behaviour vector, else the table whose content terms carry the personalization."""
    settings = services.settings
    table = (settings.blend_weights if user.behaviour is not None
             else settings.blend_weights_without_behaviour)
    return BlendWeights(**table[strategy])  # terms, and "ambiguity" where the file has it


def search(services: Services, params: SearchParams) -> SearchResult:
    started = time.perf_counter()
    strategy = params.strategy or default_strategy(services)
    available = available_strategies(services)
    if strategy not in available:
        raise ValueError(f"strategy {strategy!r} needs {STRATEGY_NEEDS[strategy]}, which this "
                         f"engine lacks; available here: {', '.join(available)}")
    # The linear retriever scales BM25 by its own min-max; explain reports BM25 over the best.
    inputs = query_inputs(services, params.query, params.filters, params.use_cache,
                          need_max_bm25=strategy != "linear_retriever" or params.explain)
    query_vector, max_bm25 = inputs.vector, inputs.max_bm25
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
    if user.behaviour is not None and user.behaviour_version != behaviour_version(services):
        # Folded in another training run's space (a re-fold is under way): leave it out.
        user = replace(user, behaviour=None)
    weights = replace(params.weights or configured_weights(services, strategy, user),
                      **params.overrides)
    scale = inputs.personal_scale(weights.ambiguity)
    weights = replace(weights, interest_long=weights.interest_long * scale,
                      interest_short=weights.interest_short * scale,
                      behaviour=weights.behaviour * scale)
    body = REQUEST_BUILDERS[strategy](services, params, weights, query_vector, max_bm25, user)
    if not params.explain:
        body["_source"] = {"includes": HIT_FIELDS}
    response = services.engine.search(services.settings.docs_alias, body)
    hits = _hits(services, params, response, query_vector, max_bm25, user)
    total = response["hits"]["total"]
    return SearchResult(hits, int(total["value"] if isinstance(total, dict) else total),
                        not user.empty, reason, strategy,
                        (time.perf_counter() - started) * 1000.0, body, weights)


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
        behaviour = source.pop(BEHAVIOUR_FIELD, None)
        components: JSON = {"final": hit.get("_score"),
                            "popularity": source.get(POPULARITY_FIELD, 0.0)}
        if embedding.size:
            components.update(query=_sim(query_vector, embedding),
                              interest_long=_sim(user.long, embedding),
                              interest_short=_sim(user.short, embedding))
        if behaviour is not None:
            components["behaviour"] = _sim(user.behaviour, np.asarray(behaviour))
        if params.explain:
            raw_bm25 = bm25.get(hit["_id"], 0.0)
            components["bm25"] = round(raw_bm25 / max_bm25, 6) if max_bm25 > 0 else 0.0
        out.append({"id": hit["_id"], "score": hit.get("_score"), "title": source.get("title"),
                    "tags": source.get("tags", []), "components": components})
    return out


def with_weights(params: SearchParams, **overrides: float) -> SearchParams:
    """The same search with some weights set (the others: the strategy's configured ones)."""
    return replace(params, overrides={**params.overrides, **overrides})
