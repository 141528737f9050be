"""The query rewrite: one engine request that blends text relevance, popularity and vector
similarities.

    final = a·norm(bm25) + b·sim(q, d) + p·log10(1 + popularity(d))
            + c·sim(u_long, d) + d·sim(u_short, d) + e·sim(u_behaviour, d_behaviour)
            + f·sim(u_behaviour_short, d_behaviour)

sim(x, d) = (1 + cos(x, d)) / 2, in [0, 1], the score the engines give a cosine kNN hit.
norm(bm25) = bm25 / (the query's best BM25 score over the index, with the same filters), also in
[0, 1], so a weight means the same for every query; the best score comes from one cheap request
(one hit, no source), cached in Redis with the query's embedding. popularity(d) is the decayed
sum of the document's interactions (plugin/pipeline/popularity.py), a script-free
``field_value_factor``. The behaviour terms compare the user's (long- and short-term) and the
document's behaviour (collaborative) vectors (plugin/pipeline/behaviour.py) where both exist in
the same version.
The weights come from plugin/ranking.json, as `make eval` chose them; a user with no
behaviour vector gets the table tuned without one.

User terms apply to documents that match the query's words, so personalization re-orders what
the query found. Every vector term covers up to ``personal_candidates`` (1,000) documents
exactly, nearest first: below that cap no document loses a term because it fell outside a
top-k (no cliff); past it a document gets none of that term.

Strategies (one object each in plugin/strategies.py, which builds their requests):

- ``script_score`` (where Painless runs): one Painless script whose source is a constant of
  the engine module scores every BM25 match on BM25 and the user's content terms, exactly,
  however many match; vectors and weights arrive as params. The query vector's and the
  behaviour's kNN clauses, popularity and the seen share are ``knn_linear``'s clauses beside it.
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
import contextvars
import hashlib
import json
import re
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np

from plugin import strategies
from plugin.caches import behaviour_coverage_key, behaviour_version_key, user_vectors_key
from plugin.config import BLEND_STRATEGIES, PLACED_POLICIES, Settings
from plugin.documents import BEHAVIOUR_FIELD, DOC_ID_FIELD, POPULARITY_FIELD
from plugin.engine import JSON, EngineError
from plugin.interest import HorizonState, UserInterest, interest_vector
from plugin.services import Services
from plugin.strategies import (
    STRATEGIES,
    BlendWeights,
    QueryContext,
    UserVectors,
    filter_clauses,
    text_query,
)

# What a hit shows. The documents' vectors come back only with ``explain`` (each term's
# similarity is computed from them): sending them is a large share of a search's cost.
HIT_FIELDS = ["title", "tags", POPULARITY_FIELD]


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
    # The hits' ids and scores only (the evaluation): fetching a hit's source makes the engine
    # read its stored vectors too, a large share of a 100-hit request.
    ids_only: bool = False


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


T = TypeVar("T")

# Requests sent while this thread encodes the query: up to two per search, so as many
# threads as two for each of the API's request threads (gunicorn.conf.py's 16).
_BACKGROUND = ThreadPoolExecutor(max_workers=32, thread_name_prefix="es-interest-search")


def _in_background(call: Callable[..., T], *args: Any) -> Future[T]:
    """``call(*args)`` on the background pool, in this request's context (its deadline)."""
    return _BACKGROUND.submit(contextvars.copy_context().run, call, *args)


# Hits named by their doc_id doc values rather than ``_id``: ``_id`` is a stored field, and
# loading any stored field decompresses the hit's whole stored block (its source, vectors
# included), which costs more than the search itself once hits number in the hundreds.
IDS_FROM_DOC_VALUES: JSON = {"_source": False, "stored_fields": "_none_",
                             "docvalue_fields": [DOC_ID_FIELD]}


def named_hits(response: JSON) -> list[JSON]:
    """The hits of a search asked with ``IDS_FROM_DOC_VALUES``, each given its ``_id``."""
    hits: list[JSON] = response["hits"]["hits"]
    for hit in hits:
        if "_id" not in hit:
            hit["_id"] = hit["fields"][DOC_ID_FIELD][0]
    return hits


def best_bm25_request(query: str, filters: Mapping[str, Sequence[str]]) -> JSON:
    """The one-hit request whose ``max_score`` is the query's best BM25 score."""
    text = {"bool": {"must": [text_query(query)], "filter": filter_clauses(filters)}}
    return {"size": 1, "_source": False, "track_total_hits": False, "query": text}


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
        # The engine answers while the model encodes: an uncached query waits for the slower.
        best = _in_background(services.engine.search, settings.docs_alias,
                              best_bm25_request(query, filters))
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
                       user.behaviour_version, tuple(user.seen_ids()),
                       unit(user.behaviour_short), user.content_version)


def user_vectors(services: Services, user_id: str) -> UserVectors:
    """The user's unit vectors (Redis, else the engine within the time budget); may raise."""
    key = user_vectors_key(services.settings, user_id)
    cached = services.redis.get(key)
    if cached:
        data = json.loads(cached)
        long, short, behaviour, behaviour_short = (
            None if data.get(k) is None else _unpack(data[k])
            for k in ("long", "short", "behaviour", "behaviour_short"))
        return UserVectors(long, short, behaviour, data.get("behaviour_version"),
                           tuple(data.get("seen", ())), behaviour_short,
                           str(data.get("content_version") or ""))
    found = services.engine.get_source(services.settings.interests_alias, user_id,
                                       timeout_s=services.settings.user_vector_budget_ms / 1000)
    vectors = UserVectors() if found is None else vectors_of(UserInterest.from_source(found))
    services.redis.set(key, json.dumps({
        "long": None if vectors.long is None else _pack(vectors.long),
        "short": None if vectors.short is None else _pack(vectors.short),
        "behaviour": None if vectors.behaviour is None else _pack(vectors.behaviour),
        "behaviour_short": (None if vectors.behaviour_short is None
                            else _pack(vectors.behaviour_short)),
        "behaviour_version": vectors.behaviour_version,
        "seen": list(vectors.seen),
        "content_version": vectors.content_version,
    }), ex=int(services.settings.user_cache_ttl_s))
    return vectors


def _timed(load: Callable[[Services, str], UserVectors], services: Services,
           user_id: str) -> tuple[UserVectors, float]:
    """What ``load`` returned, and the milliseconds it took (its own, not a queue's wait)."""
    started = time.perf_counter()
    return load(services, user_id), (time.perf_counter() - started) * 1000


def _behaviour_state(services: Services) -> tuple[str, str]:
    """The documents' behaviour-vector version and its coverage, as Redis has them ("" for
    none; cached for seconds per ``Services``): one round trip for both."""
    keys = behaviour_version_key(services.settings), behaviour_coverage_key(services.settings)
    cached = services.behaviour_versions.get_many(keys)
    if len(cached) < len(keys):
        raw = services.redis.mget(keys)
        cached = {key: "" if value is None else (
            value.decode() if isinstance(value, bytes) else str(value))
            for key, value in zip(keys, raw, strict=True)}
        services.behaviour_versions.put_many(cached)
    version_key, coverage_key = keys
    return cached[version_key], cached[coverage_key]


def behaviour_version(services: Services) -> str | None:
    """The documents' behaviour-vector version (None: no training yet)."""
    return _behaviour_state(services)[0] or None


def behaviour_support(services: Services) -> float:
    """The factor on the behaviour terms' weights: the current vectors' target coverage
    (plugin/pipeline/behaviour.py) to the power ``behaviour_support_exponent``. 1 where
    training recorded none (a run before coverage was recorded)."""
    exponent = services.settings.behaviour_support_exponent
    coverage = _behaviour_state(services)[1]
    if exponent <= 0 or not coverage:
        return 1.0
    return float(min(1.0, max(0.0, float(coverage))) ** exponent)


# -- search -----------------------------------------------------------------------------------


def available_strategies(services: Services) -> list[str]:
    """The strategies this engine can run, best first (the ranking file's strategy_order)."""
    offered = strategies.available_strategies(services.engine, services.settings.docs_alias)
    return sorted(offered, key=services.settings.strategy_order.index)


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
        raise ValueError(f"strategy {strategy!r} needs {STRATEGIES[strategy].needs}, which "
                         f"this engine lacks; available here: {', '.join(available)}")
    # The user's vectors load while the model encodes the query: neither needs the other.
    loading = (_in_background(_timed, user_vectors, services, params.user_id)
               if params.vectors is None and params.user_id else None)
    # Explain reports BM25 over the best score whatever the strategy.
    inputs = query_inputs(services, params.query, params.filters, params.use_cache,
                          need_max_bm25=STRATEGIES[strategy].needs_max_bm25 or params.explain)
    query_vector, max_bm25 = inputs.vector, inputs.max_bm25
    user = UserVectors()
    reason: str | None = "no user_id"
    if params.vectors is not None:
        user, reason = params.vectors, None if not params.vectors.empty else "empty vectors"
    elif loading is not None:
        budget_ms = services.settings.user_vector_budget_ms
        spent_ms = 0.0
        try:
            user, spent_ms = loading.result()
            reason = "user has no interest vector yet" if user.empty else None
        except Exception as exc:  # a personalization fault must never fail the search
            reason = f"user vectors unavailable ({type(exc).__name__}); not personalized"
        if reason is None and spent_ms > budget_ms:
            user = UserVectors()
            reason = (f"user vectors took {spent_ms:.1f} ms, over the {budget_ms:g} ms budget; "
                      "not personalized")
    if (user.behaviour is not None or user.behaviour_short is not None) and (
            user.behaviour_version != behaviour_version(services)):
        # Folded in another training run's space (a re-fold is under way): leave it out.
        user = user.without_behaviour()
    if user.content_version != services.content_model().version and (
            user.long is not None or user.short is not None):
        # Folded with another model (a switch's re-fold is under way): leave them out.
        user = user.without_content()
        if user.empty and reason is None:
            reason = "the user's vectors come from another model (a re-fold is under way)"
    weights, held, keep = blend_plan(services, strategy, user, inputs,
                                     params.weights, params.overrides)
    window = params.offset + params.size
    ctx = QueryContext.for_query(
        services.engine, params.query, params.filters, weights=weights, vector=query_vector,
        max_bm25=max_bm25, user=user, size=window if keep else params.size,
        offset=0 if keep else params.offset,
        personal_k=max(window, services.settings.personal_candidates), seen=held)
    bodies = [STRATEGIES[strategy].request(ctx)]
    if keep:
        bodies.append(STRATEGIES[strategy].request(replace(ctx, user=UserVectors(), seen=())))
    for body in bodies:
        if params.ids_only:
            body.update(IDS_FROM_DOC_VALUES)
        elif not params.explain:
            body["_source"] = {"includes": HIT_FIELDS}
    if keep:
        response, plain = services.engine.msearch(services.settings.docs_alias, bodies)
        for answer in (response, plain):
            if "error" in answer:
                raise EngineError(f"the engine refused the search: {answer['error']}")
        response["hits"]["hits"] = seen_places(
            services.settings, named_hits(response), named_hits(plain), set(held),
            window)[params.offset:]
    else:
        response = services.engine.search(services.settings.docs_alias, bodies[0])
        named_hits(response)
    body = bodies[0]
    hits = _hits(services, params, response, query_vector, max_bm25, user)
    held_ids = set(held)
    for hit in hits:
        # Its user terms (shown) did not count: it got the ``seen`` weight, or its place
        # without the user (``keep``), instead.
        hit["components"]["seen"] = hit["id"] in held_ids
    total = response["hits"]["total"]
    return SearchResult(hits, int(total["value"] if isinstance(total, dict) else total),
                        not user.empty, reason, strategy,
                        (time.perf_counter() - started) * 1000.0, body, weights)


def blend_plan(services: Services, strategy: str, user: UserVectors, inputs: QueryInputs,
               weights: BlendWeights | None = None,
               overrides: Mapping[str, float] | None = None
               ) -> tuple[BlendWeights, tuple[str, ...], bool]:
    """What a search of ``user`` blends: the weights (the shipped ones unless given, with
    ``overrides``; the behaviour terms scaled for the model's support, the user terms for
    the query's length), the documents held neutral,
    and whether the seen documents take their places in the search without the user
    (``keep``: then both lists cover the whole window)."""
    chosen = weights or configured_weights(services, strategy, user)
    if overrides:
        chosen = replace(chosen, **overrides)
    chosen = chosen.behaviour_scaled(behaviour_support(services))
    chosen = chosen.personal_scaled(inputs.personal_scale(chosen.ambiguity))
    chosen, keep = places_kept(services, user, chosen)
    return chosen, held_neutral(services, user), keep


def held_neutral(services: Services, user: UserVectors) -> tuple[str, ...]:
    """The documents the user terms leave out: the user's seen ones (seen_policy ``neutral``
    and ``keep``), or none (``own``: they keep their own similarity)."""
    return () if services.settings.seen_policy == "own" else user.seen


def places_kept(services: Services, user: UserVectors, weights: BlendWeights
                ) -> tuple[BlendWeights, bool]:
    """Whether this search places the user's seen documents by the search without the user
    (seen_policy ``keep``: at their places there; ``floor``: there or higher), for a user
    with seen documents and a user term, and the weights for it: ``keep`` gives no seen
    share, as the places replace it."""
    policy = services.settings.seen_policy
    keep = (policy in PLACED_POLICIES and bool(user.seen)
            and bool(strategies.user_terms(user, weights)))
    return (replace(weights, seen=0.0) if keep and policy == "keep" else weights), keep


def seen_places(settings: Settings, personalized: Sequence[JSON], plain: Sequence[JSON],
                seen: set[str], window: int) -> list[JSON]:
    """``keep_plain_places`` under the configured seen policy (one of PLACED_POLICIES)."""
    return keep_plain_places(personalized, plain, seen, window,
                             floor=settings.seen_policy == "floor")


def keep_plain_places(personalized: Sequence[JSON], plain: Sequence[JSON],
                      seen: set[str], window: int, floor: bool = False) -> list[JSON]:
    """The ``keep`` policy's list: each seen document at its place in the search without
    the user (``plain``), the other places filled with the unseen documents in personalized
    order; seen documents past the plain list's window only after the unseen run out. With
    ``floor``, a seen document takes the better of its two places (personalized or plain),
    and one in neither window comes after the unseen."""
    targets: dict[str, tuple[int, JSON]] = {
        h["_id"]: (place, h) for place, h in enumerate(plain[:window]) if h["_id"] in seen}
    if floor:
        for place, h in enumerate(personalized[:window]):
            if h["_id"] in seen and place < targets.get(h["_id"], (window, h))[0]:
                targets[h["_id"]] = (place, h)
    # By place; a tie (one's personalized place, another's plain one) keeps plain order.
    pinned = deque(sorted(targets.values(), key=lambda t: t[0]))
    unseen = deque(h for h in personalized if h["_id"] not in seen)
    rest = deque(h for h in personalized if h["_id"] in seen and h["_id"] not in targets)
    out: list[JSON] = []
    for place in range(window):
        if pinned and (pinned[0][0] <= place or not unseen):
            out.append(pinned.popleft()[1])
        elif unseen or rest:
            out.append((unseen or rest).popleft())
        else:
            break
    return out


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
            components.update(behaviour=_sim(user.behaviour, np.asarray(behaviour)),
                              behaviour_short=_sim(user.behaviour_short, np.asarray(behaviour)))
        if params.explain:
            raw_bm25 = bm25.get(hit["_id"], 0.0)
            components["bm25"] = round(raw_bm25 / max_bm25, 6) if max_bm25 > 0 else 0.0
        out.append({"id": hit["_id"], "score": hit.get("_score"), "title": source.get("title"),
                    "tags": source.get("tags", []), "components": components})
    return out


def with_weights(params: SearchParams, **overrides: float) -> SearchParams:
    """The same search with some weights set (the others: the strategy's configured ones)."""
    return replace(params, overrides={**params.overrides, **overrides})
