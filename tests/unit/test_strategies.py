"""The blend strategies' requests, built without an engine (plugin/strategies.py)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from plugin.api.schemas import SearchRequest, Weights
from plugin.config import BLEND_STRATEGIES, WEIGHT_NAMES
from plugin.engine import ElasticsearchEngine, Engine, EngineKind, OpenSearchEngine
from plugin.search import IDS_FROM_DOC_VALUES, keep_plain_places, named_hits
from plugin.strategies import (
    STRATEGIES,
    BlendWeights,
    KnnLinear,
    LinearRetriever,
    QueryContext,
    ScriptScore,
    UserVectors,
    min_max,
    seen_boost,
    seen_share,
)

ENGINES: list[Engine] = [ElasticsearchEngine(None, "9.5.3"), OpenSearchEngine(None, "2.19.1")]
USER = UserVectors(long=[1.0, 0.0], short=[0.0, 1.0], behaviour=[0.5, 0.5],
                   behaviour_short=[0.8, 0.6])
WEIGHTS = BlendWeights(bm25=1.0, query=0.5, popularity=0.2, interest_long=0.3,
                       interest_short=0.1, behaviour=0.4, behaviour_short=0.05)


def test_names_have_one_list() -> None:
    # The objects follow the names' order (best first), and every typed mirror of the
    # weights' names (the blend, the API's overrides) has exactly the ranking file's names.
    assert tuple(STRATEGIES) == BLEND_STRATEGIES
    assert tuple(f.name for f in dataclasses.fields(BlendWeights)) == WEIGHT_NAMES
    assert tuple(Weights.model_fields) == WEIGHT_NAMES
    schema = SearchRequest.model_json_schema()["properties"]["strategy"]
    assert [e for option in schema["anyOf"] for e in option.get("enum", [])] == list(
        BLEND_STRATEGIES)


def test_personal_scaling_touches_the_user_terms_only() -> None:
    scaled = WEIGHTS.personal_scaled(0.5)
    assert (scaled.interest_long, scaled.interest_short, scaled.behaviour) == (0.15, 0.05, 0.2)
    assert (scaled.bm25, scaled.query, scaled.popularity) == (1.0, 0.5, 0.2)


def test_support_scaling_touches_the_behaviour_terms_only() -> None:
    weights = dataclasses.replace(WEIGHTS, behaviour_short=0.6)
    scaled = weights.behaviour_scaled(0.25)
    assert (scaled.behaviour, scaled.behaviour_short) == (0.1, 0.15)
    assert dataclasses.replace(scaled, behaviour=0.4, behaviour_short=0.6) == weights
    assert weights.behaviour_scaled(1.0) is weights


def _context(engine: Engine, **changes: Any) -> QueryContext:
    ctx = QueryContext.for_query(engine, "space opera", {"tags": ["sci-fi"]}, weights=WEIGHTS,
                                 vector=[0.6, 0.8], max_bm25=8.0, user=USER, size=10, offset=0,
                                 personal_k=1000)
    return dataclasses.replace(ctx, **changes) if changes else ctx


def _knn_clauses(body: Any) -> list[dict[str, Any]]:
    """Every kNN clause anywhere in a request, whatever the engine's shape."""
    found: list[dict[str, Any]] = []
    if isinstance(body, dict):
        for key, value in body.items():
            if key == "knn":
                found += value if isinstance(value, list) else [value]
            else:
                found += _knn_clauses(value)
    elif isinstance(body, list):
        for value in body:
            found += _knn_clauses(value)
    return found


@pytest.mark.parametrize("engine", ENGINES, ids=lambda e: e.kind.value)
def test_knn_linear_keeps_popularity_out_of_the_bm25_scale(engine: Engine) -> None:
    body = STRATEGIES["knn_linear"].request(_context(engine))
    words = body["query"]["bool"]["should"][0]["bool"]
    # BM25 over the best score, and the popularity term at its own weight beside it.
    assert words["must"][0]["bool"]["boost"] == pytest.approx(1.0 / 8.0)
    assert words["should"][0]["function_score"]["functions"][0]["weight"] == 0.2
    boosts = sorted(round(float(next(iter(c.values()))["boost"]) if engine.kind is
                          EngineKind.OPENSEARCH else float(c["boost"]), 6)
                    for c in _knn_clauses(body))
    assert boosts == [0.05, 0.1, 0.3, 0.4, 0.5]  # the query vector and four user terms


@pytest.mark.parametrize("engine", ENGINES, ids=lambda e: e.kind.value)
@pytest.mark.parametrize("name", ["knn_linear", "linear_retriever", "script_score"])
def test_a_client_query_bounds_every_vector_term(engine: Engine, name: str) -> None:
    """The proxy's context: the client's own query is the words, what personalization may
    re-order, and the query vector's scope, so no vector term reaches past it."""
    if name == "linear_retriever" and not isinstance(engine, ElasticsearchEngine):
        pytest.skip("retrievers are Elasticsearch's")
    client_query = {"term": {"tags": "sci-fi"}}
    ctx = dataclasses.replace(_context(engine), words=client_query, matching=client_query,
                              scope=client_query, filters=[])
    body = STRATEGIES[name].request(ctx)
    text = json.dumps(body)
    assert "multi_match" not in text  # nothing of the ordinary query's words
    clauses = _knn_clauses(body)
    if name == "linear_retriever":
        clauses = [c for c in clauses if "field" in c]
    filters = [c.get("filter") if "field" in c else next(iter(c.values())).get("filter")
               for c in clauses]
    assert filters.count(client_query) == len(filters) and filters


def test_without_user_vectors_no_user_term_is_sent() -> None:
    body = STRATEGIES["knn_linear"].request(_context(ENGINES[0], user=UserVectors()))
    assert [c["field"] for c in body["knn"]] == ["embedding"]  # the query vector only


@pytest.mark.parametrize("engine", ENGINES, ids=lambda e: e.kind.value)
@pytest.mark.parametrize("name", ["knn_linear", "linear_retriever", "script_score"])
def test_seen_documents_get_the_seen_weight_not_their_own_terms(engine: Engine,
                                                                name: str) -> None:
    """Held neutral: every user term's kNN leaves the seen documents out, the query vector's
    does not, and one constant clause gives them the ``seen`` share among the matches."""
    if name == "linear_retriever" and not isinstance(engine, ElasticsearchEngine):
        pytest.skip("retrievers are Elasticsearch's")
    seen = ("m1", "m2")
    ctx = _context(engine, seen=seen, weights=dataclasses.replace(WEIGHTS, seen=0.25))
    body = STRATEGIES[name].request(ctx)
    excluded = {"ids": {"values": list(seen)}}
    user_vectors = [USER.long, USER.short, USER.behaviour, USER.behaviour_short]
    for clause in _knn_clauses(body):
        spec = clause if "field" in clause else next(iter(clause.values()))
        vector = spec.get("query_vector", spec.get("vector"))
        if vector in user_vectors:
            assert spec["filter"]["bool"]["must_not"] == [excluded], spec
        elif vector == ctx.vector:
            assert "must_not" not in json.dumps(spec.get("filter"))
    text = json.dumps(body)
    # A quarter of the user terms' total weight (0.3 + 0.1 + 0.4 + 0.05).
    constant = {"constant_score": {"filter": {"bool": {"filter": [ctx.matching, excluded]}},
                                   "boost": 0.25 * (0.3 + 0.1 + 0.4 + 0.05)}}
    assert text.count(json.dumps(constant)) == 1
    if name == "script_score":
        # The script scores seen documents without the content terms.
        params = [s["script_score"]["script"]["params"]
                  for s in body["query"]["bool"]["should"][0]["bool"]["should"]]
        assert [(p["c"], p["d"]) for p in params] == [(0.3, 0.1), (0.0, 0.0)]
    # Policy "own" (nothing held neutral) leaves the request as it was.
    assert "must_not" not in json.dumps(STRATEGIES[name].request(_context(engine)))


def test_a_user_who_knows_many_documents_gets_a_smaller_seen_share() -> None:
    w = dataclasses.replace(WEIGHTS, seen=0.5, seen_crowding=1.0)
    # Up to SEEN_FEW (20) seen documents the share is whole; beyond, (n / 20)^-crowding.
    assert seen_share(1, w) == seen_share(20, w) == 0.5
    assert seen_share(40, w) == pytest.approx(0.25)
    assert seen_share(80, dataclasses.replace(w, seen_crowding=0.5)) == pytest.approx(0.25)
    assert seen_share(300, dataclasses.replace(w, seen_crowding=0.0)) == 0.5
    # The boost every strategy (and the evaluation's offline blend) gives a held-neutral
    # document follows: 40 seen documents, a quarter of the user terms' total weight.
    heavy = dataclasses.replace(USER, seen=tuple(f"m{i}" for i in range(40)))
    assert seen_boost(heavy, w) == pytest.approx(0.25 * (0.3 + 0.1 + 0.4 + 0.05))
    ctx = _context(ENGINES[0], seen=heavy.seen, weights=w, user=heavy)
    clause = ctx.seen_clause()
    assert clause is not None
    assert clause["constant_score"]["boost"] == pytest.approx(0.25 * 0.85)


def test_hits_named_from_doc_values() -> None:
    # A search asked for ids only reads no stored field, so its hits carry no _id.
    assert IDS_FROM_DOC_VALUES["stored_fields"] == "_none_"
    response = {"hits": {"hits": [{"_score": 2.0, "fields": {"doc_id": ["m1"]}},
                                  {"_id": "m2", "_score": 1.0}]}}
    assert [h["_id"] for h in named_hits(response)] == ["m1", "m2"]
    assert response["hits"]["hits"][0]["_id"] == "m1"


def test_keep_puts_seen_documents_at_their_places_without_the_user() -> None:
    def hits(*ids: str) -> list[dict[str, Any]]:
        return [{"_id": i} for i in ids]

    # Without the user: s1 third, s2 fifth. Personalized (seen documents scored without
    # their own terms): the unseen ones re-ordered, the seen ones pushed down.
    plain = hits("a", "b", "s1", "c", "s2", "d")
    personalized = hits("d", "c", "a", "b", "s1", "s2")
    merged = keep_plain_places(personalized, plain, {"s1", "s2"}, 6)
    assert [h["_id"] for h in merged] == ["d", "c", "s1", "a", "s2", "b"]
    # A seen document beyond the window of the list without the user comes after every
    # unseen one; the list never repeats a document and stops where both run out.
    merged = keep_plain_places(hits("x", "s3", "y"), hits("x", "y", "s1"), {"s1", "s3"}, 2)
    assert [h["_id"] for h in merged] == ["x", "y"]
    merged = keep_plain_places(hits("x", "s3"), hits("x"), {"s3"}, 5)
    assert [h["_id"] for h in merged] == ["x", "s3"]


def test_floor_keeps_seen_documents_at_their_place_without_the_user_or_higher() -> None:
    def hits(*ids: str) -> list[dict[str, Any]]:
        return [{"_id": i} for i in ids]

    # Without the user: s1 first (a title the user knows), s2 fifth. Personalized: s1 fell
    # to fourth (unseen documents near the user's taste passed it), s2 rose to second.
    plain = hits("s1", "a", "b", "c", "s2", "d")
    personalized = hits("d", "s2", "c", "s1", "a", "b")
    merged = keep_plain_places(personalized, plain, {"s1", "s2"}, 6, floor=True)
    assert [h["_id"] for h in merged] == ["s1", "s2", "d", "c", "a", "b"]
    # Without floor (keep): exactly the plain places.
    merged = keep_plain_places(personalized, plain, {"s1", "s2"}, 6)
    assert [h["_id"] for h in merged] == ["s1", "d", "c", "a", "s2", "b"]
    # Two seen documents due at the same place: both placed, in turn, nothing repeated.
    merged = keep_plain_places(hits("x", "s2", "y"), hits("x", "s1", "y"), {"s1", "s2"}, 4,
                               floor=True)
    assert [h["_id"] for h in merged] == ["x", "s1", "s2", "y"]


def test_min_max_over_a_terms_hits_keeps_equal_scores() -> None:
    assert min_max([2.0, 4.0, 3.0]) == [0.0, 1.0, 0.5]
    assert min_max([0.7, 0.7]) == [0.7, 0.7]
    assert min_max([]) == []


def test_each_term_is_weighed_as_its_strategy_blends_it() -> None:
    """knn_linear divides BM25 by the query's best score and adds the rest as scored;
    linear_retriever min-max normalizes every term over its hits; script_score's script
    caps BM25 over the best score at 1 and adds its content similarities on every match
    but the held-neutral ones (the same constant script, the other weights 0)."""
    ctx = dataclasses.replace(_context(ElasticsearchEngine(None, "9.5.3")), max_bm25=4.0)
    assert KnnLinear().term_scores("bm25", [4.0, 2.0], ctx) == [1.0, 0.5]
    assert KnnLinear().term_scores("behaviour", [0.8, 0.6], ctx) == [0.8, 0.6]
    assert LinearRetriever().term_scores("bm25", [4.0, 2.0, 3.0], ctx) == [1.0, 0.0, 0.5]
    searches = dict(LinearRetriever().term_searches(ctx, matches=5000))
    assert list(searches) == [name for name, _, _ in LinearRetriever().terms(ctx)]
    assert {body["size"] for body in searches.values()} == {ctx.personal_k}
    assert ScriptScore().term_scores("bm25", [5.0, 2.0], ctx) == [1.0, 0.5]
    held = dataclasses.replace(ctx, seen=("d1",))
    searches = dict(ScriptScore().term_searches(held, matches=5000))
    assert list(searches) == ["bm25", "popularity", "interest_long", "interest_short", "query",
                              "behaviour", "behaviour_short"]
    script = searches["interest_short"]["query"]["script_score"]
    assert script["query"] == held.personal_scope and searches["interest_short"]["size"] == 5000
    assert script["script"]["source"] == held.engine.blend_script("embedding")
    params = script["script"]["params"]
    assert (params["a"], params["c"], params["d"], params["us"]) == (0.0, 0.0, 1.0,
                                                                     held.user.short)
    assert {searches[n]["size"] for n in ("query", "behaviour")} == {ctx.personal_k}


@pytest.mark.parametrize("engine", ENGINES, ids=lambda e: e.kind.value)
def test_knn_linears_term_searches_are_its_clauses_at_weight_one(engine: Engine) -> None:
    """What the evaluation adds up offline (offline_blend.py) is the request's own clauses:
    the words and popularity over every match, each kNN clause with its field, vector and
    scope, each at weight 1."""
    ctx = _context(engine, seen=("d1",))
    strategy = KnnLinear()
    searches = dict(strategy.term_searches(ctx, matches=5000))
    assert list(searches) == ["bm25", "popularity", "query", "interest_long",
                              "interest_short", "behaviour", "behaviour_short"]
    assert searches["bm25"]["size"] == searches["popularity"]["size"] == 5000
    assert searches["bm25"]["query"]["bool"]["must"] == [ctx.words]
    request = _knn_clauses(strategy.request(ctx))
    for name, body in searches.items():
        if name in ("bm25", "popularity"):
            continue
        (clause,) = _knn_clauses(body)
        # The request's clause for this term, up to its weight.
        inner = next(iter(clause.values())) if engine.kind is EngineKind.OPENSEARCH else clause
        assert float(inner["boost"]) == 1.0
        assert any({k: v for k, v in (next(iter(c.values())) if engine.kind is
                                      EngineKind.OPENSEARCH else c).items() if k != "boost"}
                   == {k: v for k, v in inner.items() if k != "boost"} for c in request)
        assert body["size"] == ctx.personal_k
    # A weight of 0 leaves its clause out of both.
    no_query = dataclasses.replace(ctx, weights=dataclasses.replace(WEIGHTS, query=0.0))
    assert "query" not in dict(strategy.term_searches(no_query, 5000))


@pytest.mark.parametrize("strategy", BLEND_STRATEGIES)
def test_every_elasticsearch_knn_clause_searches_twice_k_candidates(strategy: str) -> None:
    # At k candidates HNSW's top k is approximate and changes with the index's segments.
    engine = ElasticsearchEngine(None, "9.5.3")
    clauses = _knn_clauses(STRATEGIES[strategy].request(_context(engine)))
    assert clauses
    for clause in clauses:
        assert clause["num_candidates"] == min(10_000, 2 * clause["k"]), clause
    huge = _knn_clauses(STRATEGIES[strategy].request(_context(engine, personal_k=8000)))
    assert {c["num_candidates"] for c in huge} == {10_000}
