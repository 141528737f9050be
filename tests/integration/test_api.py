"""The HTTP layer end to end: real app, engine, Redis, model and worker processes."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from plugin.api import create_app
from plugin.api.auth import create_key
from plugin.config import BLEND_STRATEGIES, PLACED_POLICIES, Settings
from plugin.engine import EngineKind
from plugin.search import available_strategies
from plugin.services import Services
from plugin.strategies import STRATEGIES

pytestmark = pytest.mark.integration

ANIMALS = ["Dog training tips for puppies", "Caring for your cat at home",
           "Horse riding lessons for beginners", "Feeding pet rabbits and guinea pigs"]
CARS = ["Changing the oil in your car engine", "Choosing winter tires for your car",
        "Electric cars and charging stations", "Repairing a motorcycle gearbox"]
QUERY = "care and maintenance tips"


@pytest.fixture(scope="module")
def app(settings: Settings, services: Services) -> Flask:
    return create_app(settings)


@pytest.fixture(scope="module")
def keys(services: Services) -> dict[str, str]:
    rate = "10000/minute"
    return {"read": create_key(services, "reader", ("read",), rate),
            "write": create_key(services, "writer", ("read", "write"), rate)}


@pytest.fixture(scope="module")
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"ApiKey {key}"}


@pytest.fixture(scope="module")
def topics(client: FlaskClient, keys: dict[str, str], celery_client: Any, worker: Any,
           services: Services) -> dict[str, str]:
    """Animal and car documents, and user A's likes of three car documents, via the API."""
    run = uuid.uuid4().hex[:6]
    # Every document matches the query's words a little ("tips"): the order is what counts.
    docs = [{"id": f"a{i}-{run}", "title": t, "tags": ["animals"], "body": "practical tips"}
            for i, t in enumerate(ANIMALS)]
    docs += [{"id": f"c{i}-{run}", "title": t, "tags": ["cars"], "body": "practical tips"}
             for i, t in enumerate(CARS)]
    answer = client.post("/documents", json={"documents": docs}, headers=auth(keys["write"]))
    assert answer.status_code == 202 and answer.json["accepted"] == 8
    for task_id in answer.json["task_ids"]:
        celery_client.AsyncResult(task_id).get(timeout=120)
    services.engine.client.indices.refresh(index=services.settings.docs_alias)
    user_a, user_b = f"A-{run}", f"B-{run}"
    now = time.time()
    likes = [{"event_id": f"like-{i}-{run}", "user_id": user_a, "doc_id": f"c{i}-{run}",
              "type": "like", "timestamp": now - 10 + i} for i in range(3)]
    answer = client.post("/events", json=likes, headers=auth(keys["write"]))
    assert answer.status_code == 202 and answer.json["accepted"] == 3
    for task_id in answer.json["task_ids"]:
        celery_client.AsyncResult(task_id).get(timeout=120)
    stored = services.engine.client.get(index=services.settings.events_alias,
                                        id=f"like-0-{run}")["_source"]
    # The API stamped when it accepted them; the worker, when they reached the user.
    assert stored["accepted_at"] <= stored["received_at"] <= stored["applied_at"]
    assert stored["update_lag_ms"] == stored["applied_at"] - stored["accepted_at"]
    return {"a": user_a, "b": user_b, "run": run}


def strategies(services: Services) -> list[str]:
    return available_strategies(services)


def search(client: FlaskClient, key: str, **body: Any) -> Any:
    answer = client.post("/search", json={"q": QUERY, "size": 8, **body}, headers=auth(key))
    assert answer.status_code == 200, answer.json
    return answer.json


def car_rank(result: Any) -> float:
    ranks = [i for i, h in enumerate(result["hits"]) if h["id"].startswith("c")]
    return sum(ranks) / len(ranks)


@pytest.mark.parametrize("strategy", BLEND_STRATEGIES)
def test_likes_move_only_that_users_results(client: FlaskClient, keys: dict[str, str],
                                            topics: dict[str, str], services: Services,
                                            strategy: str) -> None:
    if strategy not in strategies(services):
        pytest.skip(f"{services.engine.kind.value} {services.engine.version} here lacks "
                    f"{STRATEGIES[strategy].needs}")
    # The mechanism, whatever weight the shipped file gives content terms on this strategy
    # and however much it damps them for this four-word query (the liked documents themselves
    # get the seen weight: held neutral, policy permitting).
    on = {"interest_long": 1.0, "seen": 1.0, "ambiguity": 0.0}
    a = search(client, keys["read"], user_id=topics["a"], strategy=strategy, explain=True,
               weights=on)
    b = search(client, keys["read"], user_id=topics["b"], strategy=strategy, weights=on)
    plain = search(client, keys["read"], strategy=strategy, weights=on)
    assert a["personalized"] and not b["personalized"]
    assert b["reason"] == "user has no interest vector yet" and plain["reason"] == "no user_id"
    assert [h["id"] for h in b["hits"]] == [h["id"] for h in plain["hits"]]
    assert car_rank(a) < car_rank(b)
    top = a["hits"][0]["components"]
    assert set(top) == {"final", "bm25", "query", "popularity", "interest_long",
                        "interest_short", "seen"}
    assert 0 <= top["bm25"] <= 1 and 0 <= top["interest_long"] <= 1
    # Without explain the engine sends no vectors back, so only what needs none is shown.
    assert all(set(h["components"]) == {"final", "popularity", "seen"} for h in b["hits"])
    assert a["strategy"] == strategy and a["took_ms"] > 0


@pytest.mark.parametrize("strategy", BLEND_STRATEGIES)
def test_seen_documents_get_no_boost_of_their_own(settings: Settings, keys: dict[str, str],
                                                  topics: dict[str, str], services: Services,
                                                  strategy: str) -> None:
    """User A's liked documents are their nearest ones; held neutral (seen_policy neutral,
    seen share 0), each keeps exactly its score without a user, while the document they did
    not see moves."""
    if strategy not in strategies(services):
        pytest.skip(f"{services.engine.kind.value} {services.engine.version} here lacks "
                    f"{STRATEGIES[strategy].needs}")
    neutral = create_app(replace(settings, seen_policy="neutral")).test_client()
    on = {"interest_long": 1.0, "seen": 0.0}
    mine = search(neutral, keys["read"], user_id=topics["a"], strategy=strategy, weights=on,
                  size=50, explain=True)
    plain = search(neutral, keys["read"], strategy=strategy, weights=on, size=50)
    run = topics["run"]
    liked = {f"c{i}-{run}" for i in range(3)}
    scores = {h["id"]: h["score"] for h in mine["hits"]}
    plain_scores = {h["id"]: h["score"] for h in plain["hits"]}
    assert liked <= set(scores) and mine["personalized"]
    # The document nearest to the user's vector is one they liked: held, not boosted.
    nearest = max(mine["hits"], key=lambda h: h["components"]["interest_long"])
    assert nearest["id"] in liked
    for hit in mine["hits"]:
        assert hit["components"]["seen"] is (hit["id"] in liked)
        if hit["id"] in liked:
            assert hit["score"] == pytest.approx(plain_scores[hit["id"]], rel=1e-5)
    unseen = f"c3-{run}"
    assert scores[unseen] > plain_scores[unseen] * (1 + 1e-4)


@pytest.mark.parametrize("policy", PLACED_POLICIES)
@pytest.mark.parametrize("strategy", BLEND_STRATEGIES)
def test_placed_policies_leave_seen_documents_at_their_places_without_the_user(
        settings: Settings, keys: dict[str, str], topics: dict[str, str], services: Services,
        strategy: str, policy: str) -> None:
    """seen_policy keep: user A's liked documents (their nearest ones) sit exactly where the
    search without the user puts them; floor: there or higher; on every page, while the
    document they did not see gets the boost."""
    if strategy not in strategies(services):
        pytest.skip(f"{services.engine.kind.value} {services.engine.version} here lacks "
                    f"{STRATEGIES[strategy].needs}")
    placed = create_app(replace(settings, seen_policy=policy)).test_client()
    on = {"interest_long": 1.0, "ambiguity": 0.0}
    mine = search(placed, keys["read"], user_id=topics["a"], strategy=strategy, weights=on,
                  size=20)
    plain = search(placed, keys["read"], strategy=strategy, weights=on, size=20)
    run = topics["run"]
    liked = {f"c{i}-{run}" for i in range(3)}
    mine_at = {h["id"]: n for n, h in enumerate(mine["hits"])}
    plain_at = {h["id"]: n for n, h in enumerate(plain["hits"])}
    assert mine["personalized"] and liked <= set(plain_at)
    if policy == "keep":
        assert {doc: mine_at.get(doc) for doc in liked} == {doc: plain_at[doc] for doc in liked}
    else:
        assert liked <= set(mine_at)
        assert all(mine_at[doc] <= plain_at[doc] for doc in liked), (mine_at, plain_at)
    assert all(h["components"]["seen"] is (h["id"] in liked) for h in mine["hits"])
    # The document they did not see, near their taste, got the personal boost.
    scores = {h["id"]: h["score"] for h in mine["hits"]}
    plain_scores = {h["id"]: h["score"] for h in plain["hits"]}
    unseen = f"c3-{run}"
    assert scores[unseen] > plain_scores[unseen] * (1 + 1e-4)
    # A page is the same list's slice.
    page = search(placed, keys["read"], user_id=topics["a"], strategy=strategy, weights=on,
                  size=5, **{"from": 3})
    assert [h["id"] for h in page["hits"]] == [h["id"] for h in mine["hits"][3:8]]


def test_strategies_agree_on_clearly_separated_results(client: FlaskClient,
                                                       keys: dict[str, str],
                                                       topics: dict[str, str],
                                                       services: Services) -> None:
    if len(strategies(services)) < 2:
        pytest.skip(f"{services.engine.kind.value} {services.engine.version} offers one "
                    "strategy only (no Painless, no linear retriever)")
    # The liked documents (held neutral, policy permitting) get twice the user term's weight.
    results = {s: search(client, keys["read"], user_id=topics["a"], strategy=s,
                         weights={"interest_long": 8.0, "seen": 2.0, "ambiguity": 0.0})
               for s in strategies(services)}
    orders = {s: [h["id"] for h in r["hits"]] for s, r in results.items()}
    # script_score and knn_linear compute the same sum here; the linear retriever min-max
    # normalizes each term first, so only the clearly separated head must agree with it.
    if {"script_score", "knn_linear"} <= set(orders):
        assert orders["script_score"] == orders["knn_linear"]
    liked = [f"c{i}-{topics['run']}" for i in range(3)]
    for s, r in results.items():
        assert sorted(orders[s][:3]) == liked, s
        assert r["hits"][2]["score"] - r["hits"][3]["score"] > 0.05, s


def test_a_personalization_fault_answers_unpersonalized(settings: Settings,
                                                        keys: dict[str, str],
                                                        topics: dict[str, str]) -> None:
    slow = create_app(replace(settings, user_vector_budget_ms=0.001)).test_client()
    user = topics["a"]
    answer = slow.post("/search", json={"q": QUERY, "user_id": user}, headers=auth(keys["read"]))
    assert answer.status_code == 200
    assert not answer.json["personalized"] and "budget" in answer.json["reason"]


# -- the Elasticsearch-compatible proxy ----------------------------------------------------


@pytest.fixture(scope="module")
def server(app: Flask) -> Iterator[str]:
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_port}"
    http.shutdown()


def test_proxy_answers_the_engines_own_client(server: str, keys: dict[str, str],
                                              topics: dict[str, str], services: Services) -> None:
    index = services.settings.docs_alias
    body = {"size": 8, "query": {"bool": {
        "must": [{"match": {"title": "for your and the in tips"}}],
        "filter": [{"terms": {"tags": ["animals", "cars"]}},
                   {"wildcard": {"doc_id": f"*-{topics['run']}"}}]}}}
    if services.engine.kind is EngineKind.ELASTICSEARCH:
        from elasticsearch import Elasticsearch

        es = Elasticsearch(server, api_key=keys["read"])
        mine = es.options(headers={"X-User-Id": topics["a"]}).search(index=index, body=body)
        plain = es.search(index=index, body=body)
        assert mine.meta.headers["X-Es-Interest-Personalized"] == "true"
        assert plain.meta.headers["X-Es-Interest-Personalized"] == "false"
    else:
        from opensearchpy import OpenSearch

        client = OpenSearch(hosts=[server], headers={"Authorization": f"ApiKey {keys['read']}"})
        mine = client.search(index=index, body=body, headers={"X-User-Id": topics["a"]})
        plain = client.search(index=index, body=body)
    assert mine["hits"]["hits"] and plain["hits"]["hits"]
    # Same result set (the original query filters every kNN clause), a different order.
    assert {h["_id"] for h in mine["hits"]["hits"]} == {h["_id"] for h in plain["hits"]["hits"]}
    assert [h["_id"] for h in mine["hits"]["hits"]] != [h["_id"] for h in plain["hits"]["hits"]]


def test_proxy_under_keep_leaves_seen_documents_at_their_places(
        settings: Settings, keys: dict[str, str], topics: dict[str, str],
        services: Services) -> None:
    keep = create_app(replace(settings, seen_policy="keep")).test_client()
    # One routing preference for every search here: on a cluster, two searches served by
    # different copies of a shard (different deleted documents, so different BM25
    # statistics) may order near ties differently.
    path = f"/{services.settings.docs_alias}/_search?preference=keep-places"
    body = {"size": 20, "query": {"bool": {
        "must": [{"multi_match": {"query": QUERY, "fields": ["title", "body"]}}],
        "filter": [{"wildcard": {"doc_id": f"*-{topics['run']}"}}]}}}

    def ids(answer: Any) -> list[str]:
        assert answer.status_code == 200, answer.json
        assert "status" not in answer.json  # a search's answer, not a multi-search's
        return [h["_id"] for h in answer.json["hits"]["hits"]]

    user = {**auth(keys["read"]), "X-User-Id": topics["a"]}
    mine = keep.post(path, json=body, headers=user)
    plain = ids(keep.post(path, json=body, headers=auth(keys["read"])))
    assert mine.headers["X-Es-Interest-Personalized"] == "true"
    liked = {f"c{i}-{topics['run']}" for i in range(3)}
    assert liked <= set(plain)
    assert {d: ids(mine).index(d) for d in liked} == {d: plain.index(d) for d in liked}
    page = keep.post(path, json={**body, "size": 5, "from": 3}, headers=user)
    assert ids(page) == ids(mine)[3:8]


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), [
    ("post", "/{docs}/_search", {"query": {"script_score": {"query": {"match_all": {}},
     "script": {"source": "1"}}}}, 400, "scripts and code are refused"),
    ("post", "/{docs}/_search", {"script_fields": {"x": {"script": "1"}}}, 400, "refused"),
    ("post", "/{docs}/_search", {"runtime_mappings": {"x": {"type": "long"}}}, 400, "refused"),
    ("post", "/{docs}/_search", {"size": 100000}, 400, "'size' must be"),
    ("post", "/{docs}/_search", {"size": "many"}, 400, "must be a whole number"),
    # Reading other indices through clauses that name one (issue 9, finding 10).
    ("post", "/{docs}/_search", {"query": {"terms": {"tags": {
        "index": "{interests}", "id": "u1", "path": "top_tags"}}}}, 400, "reads another index"),
    ("post", "/{docs}/_search", {"query": {"more_like_this": {
        "fields": ["title"], "like": [{"_index": "{events}", "_id": "e1"}]}}}, 400,
     "reads another index"),
    # Issue 19: a terms lookup inside significant_terms' background_filter.
    ("post", "/{docs}/_search", {"size": 0, "aggs": {"s": {"significant_terms": {
        "field": "tags", "background_filter": {"terms": {"doc_id": {
            "index": "{events}", "id": "e1", "path": "doc_id"}}}}}}}, 400,
     "reads another index"),
    ("post", "/{docs}/_search", {"aggs": {"s": {"significant_text": {"field": "title"}}}}, 400,
     "aggregation 'significant_text'"),
    # Issue 19: what used to answer 500.
    ("post", "/search", {"q": "x", "filters": {"tags": ["\ud800"]}}, 400, "lone surrogate"),
    ("post", "/search", {"q": "x", "user_id": "u" * 513}, 400, "user_id"),
    ("post", "/{docs}/_search", {"aggs": {"t": {"terms": {"field": "tags", "size": 100000}}}},
     400, "is over 1000"),
    ("post", "/{events}/_search", {}, 404, "configured indices only"),
    ("post", "/_bulk", {}, 404, ""),
    ("delete", "/{docs}/_search", None, 405, ""),
    ("get", "/_cat/indices", None, 404, ""),
    ("post", "/search", {"q": "x", "size": 5000}, 400, "size"),
    ("post", "/search", {"q": "x", "weights": {"bm25": 1e9}}, 400, "weights.bm25"),
    ("post", "/search", {"q": "x", "weights": {"query": "lots"}}, 400, "weights.query"),
    ("post", "/search", {"q": "x", "weights": {"hack": 1}}, 400, "weights.hack"),
    ("post", "/search", {"q": "x", "filters": {"embedding": ["1"]}}, 400, "unknown filter"),
    ("post", "/search", {"size": 3}, 400, "q: Field required"),
    ("post", "/search", {"q": "x", "strategy": "painless_inline"}, 400, "strategy"),
])
def test_injection_attempts_get_a_clear_4xx(client: FlaskClient, keys: dict[str, str],
                                            services: Services, method: str, path: str,
                                            body: Any, status: int, message: str) -> None:
    names = {"docs": services.settings.docs_alias, "events": services.settings.events_alias,
             "interests": services.settings.interests_alias}
    path = path.format(**names)
    if body is not None:
        body = json.loads(json.dumps(body).replace("{interests}", names["interests"])
                          .replace("{events}", names["events"]))
    answer = getattr(client, method)(path, json=body, headers=auth(keys["read"]))
    assert answer.status_code == status
    assert message in answer.get_data(as_text=True)


def test_json_nested_too_deep_is_a_400_everywhere(client: FlaskClient, keys: dict[str, str],
                                                  services: Services) -> None:
    """Issue 19: 100,000 levels of nesting were a RecursionError (500) on every JSON path."""
    deep = "[" * 100_000 + "]" * 100_000
    for path in ("/events", "/documents", "/search", f"/{services.settings.docs_alias}/_search"):
        answer = client.post(path, data=deep, content_type="application/json",
                             headers=auth(keys["write"]))
        assert answer.status_code == 400, (path, answer.status_code)
        assert "nests too deeply" in answer.get_data(as_text=True), path


def test_a_200_carries_no_retry_after(client: FlaskClient, keys: dict[str, str]) -> None:
    answer = client.get("/search?q=tips", headers=auth(keys["read"]))
    assert answer.status_code == 200
    assert "Retry-After" not in answer.headers


def test_malformed_vectors_and_events_are_rejected_per_item(client: FlaskClient,
                                                            keys: dict[str, str]) -> None:
    docs = [{"id": "ok", "title": "fine"}, {"id": "nan", "title": "x", "embedding": ["NaN"] * 384},
            {"id": "short", "title": "x", "embedding": "not a list"}]
    answer = client.post("/documents", json=docs, headers=auth(keys["write"]))
    assert answer.status_code == 202 and answer.json["accepted"] == 1
    errors = {e["id"]: e["error"] for e in answer.json["errors"]}
    assert "NaN" in errors["nan"] and "non-empty list" in errors["short"]
    bad = client.post("/events", json=[{"user_id": "u", "type": "like", "doc_id": "d",
                                        "weight": "x"}], headers=auth(keys["write"]))
    assert bad.status_code == 202 and bad.json["accepted"] == 0
    assert "'weight' must be a number" in bad.json["errors"][0]["error"]


def test_non_finite_sizes_get_a_400(client: FlaskClient, keys: dict[str, str],
                                    services: Services) -> None:
    for raw in ('{"size": Infinity}', '{"from": -Infinity}', '{"size": 1e400}'):
        answer = client.post(f"/{services.settings.docs_alias}/_search", data=raw,
                             content_type="application/json", headers=auth(keys["read"]))
        assert answer.status_code == 400, raw
        assert "finite whole number" in answer.get_data(as_text=True)


def test_bodies_over_the_limit_get_a_413_naming_it(settings: Settings,
                                                   keys: dict[str, str]) -> None:
    small = create_app(replace(settings, api_max_body_mb=0.01)).test_client()
    events = [{"user_id": "u", "type": "like", "doc_id": f"d{i}", "pad": "x" * 100}
              for i in range(200)]
    answer = small.post("/events", json=events, headers=auth(keys["write"]))
    assert answer.status_code == 413
    assert "ES_INTEREST_API_MAX_BODY_MB" in answer.json["error"]


def test_what_the_engine_cannot_store_is_refused_per_item(client: FlaskClient,
                                                          keys: dict[str, str],
                                                          celery_client: Any, worker: Any,
                                                          services: Services) -> None:
    """Issue 9, findings 3 and 4: a bad item is rejected at the API with its reason, and the
    good events of the same batch are stored and folded."""
    run = uuid.uuid4().hex[:6]
    good = [{"event_id": f"ok-{i}-{run}", "user_id": f"store-{run}", "type": "query",
             "text": "winter tires", "unknown_field": "x" * 1000} for i in range(3)]
    bad = [{"event_id": f"long-{run}", "user_id": "u" * 600, "type": "query", "text": "x"},
           {"event_id": "e" * 600, "user_id": f"store-{run}", "type": "query", "text": "x"},
           {"event_id": f"big-{run}", "user_id": f"store-{run}", "type": "like", "doc_id": "d",
            "weight": 1e308}]
    raw = json.dumps(good + bad)[:-1] + ', {"event_id": "sur-' + run + \
        '", "user_id": "u\\ud800", "type": "query", "text": "x"}]'
    answer = client.post("/events", data=raw, content_type="application/json",
                         headers=auth(keys["write"]))
    assert answer.status_code == 202 and answer.json["accepted"] == 3
    reasons = " | ".join(e["error"] for e in answer.json["errors"])
    assert "'user_id' is 600 bytes" in reasons and "'event_id' is 600 bytes" in reasons
    assert "out of range" in reasons and "not valid Unicode" in reasons
    for task_id in answer.json["task_ids"]:
        report = celery_client.AsyncResult(task_id).get(timeout=120)
        assert sorted(report["done"]) == sorted(e["event_id"] for e in good)
    stored = services.engine.client.mget(index=services.settings.events_alias,
                                         body={"ids": [e["event_id"] for e in good]})
    assert all(d["found"] and "unknown_field" not in d["_source"] for d in stored["docs"])
    user = client.get(f"/users/store-{run}/interest", headers=auth(keys["read"]))
    assert user.status_code == 200 and user.json["event_counts"] == {"query": 3}


# -- access ----------------------------------------------------------------------------------


def test_keys_scopes_and_rate_limits(app: Flask, services: Services) -> None:
    client = app.test_client()
    assert client.get("/search?q=x").status_code == 401
    assert client.get("/search?q=x", headers=auth("esi_wrong")).status_code == 401
    reader = create_key(services, f"r-{uuid.uuid4().hex[:6]}", ("read",), "3/minute")
    assert client.post("/events", json=[{}], headers=auth(reader)).status_code == 403
    answers = [client.get("/search?q=tips", headers=auth(reader)) for _ in range(4)]
    assert [a.status_code for a in answers[:2]] == [200, 200]
    assert answers[-1].status_code == 429
    # Issue 9, finding 13: a refused client is told when to come back, and what its limit is
    # (only a refusal carries these: each costs a Redis read).
    assert int(answers[-1].headers["Retry-After"]) > 0
    assert answers[-1].headers["X-RateLimit-Limit"] == "3"
    assert answers[-1].headers["X-RateLimit-Remaining"] == "0"
    assert "X-RateLimit-Limit" not in answers[0].headers


def test_tenant_keys_reach_only_their_users(client: FlaskClient, services: Services,
                                            topics: dict[str, str]) -> None:
    """Finding 12: a key scoped to a user-id prefix reads, personalizes and writes only for
    those users."""
    mine, other = topics["a"], topics["b"]  # "A-<run>" and "B-<run>"
    key = create_key(services, f"tenant-{topics['run']}", ("read", "write"),
                     "1000/minute", user_prefix="A-")
    assert client.get(f"/users/{mine}/interest", headers=auth(key)).status_code == 200
    denied = client.get(f"/users/{other}/interest", headers=auth(key))
    assert denied.status_code == 403 and "'A-'" in denied.json["error"]
    assert client.delete(f"/users/{other}", headers=auth(key)).status_code == 403
    assert client.get(f"/search?q=tips&user_id={mine}", headers=auth(key)).status_code == 200
    assert client.get(f"/search?q=tips&user_id={other}", headers=auth(key)).status_code == 403
    proxied = client.post(f"/{services.settings.docs_alias}/_search", json={},
                          headers={**auth(key), "X-User-Id": other})
    assert proxied.status_code == 403
    sent = client.post("/events", json=[
        {"user_id": other, "type": "like", "doc_id": "d1"},
        {"user_id": f"{mine}-x", "type": "like", "doc_id": "d1"}], headers=auth(key))
    assert sent.status_code == 202 and sent.json["accepted"] == 1
    assert "outside the users this API key serves" in sent.json["errors"][0]["error"]


def test_user_endpoints(client: FlaskClient, keys: dict[str, str],
                        topics: dict[str, str], services: Services) -> None:
    services.engine.client.indices.refresh(index=services.settings.events_alias)
    answer = client.get(f"/users/{topics['a']}/interest", headers=auth(keys["read"]))
    assert answer.status_code == 200
    data = answer.json
    assert data["event_counts"] == {"like": 3} and data["top_tags"] == ["cars"]
    assert data["horizons"]["long"]["present"]
    assert all(n["id"].startswith("c") for n in data["horizons"]["long"]["nearest"][:3])
    assert len(data["recent_events"]) == 3
    user = f"erase-{topics['run']}"
    client.post("/events", json=[{"user_id": user, "type": "query", "text": "gearbox"}],
                headers=auth(keys["write"]))
    deadline = time.monotonic() + 60
    # 404 until the worker folded the event (503: the engine was briefly unavailable).
    while client.get(f"/users/{user}/interest",
                     headers=auth(keys["read"])).status_code in (404, 503):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    gone = client.delete(f"/users/{user}", headers=auth(keys["write"]))
    assert gone.status_code == 200 and gone.json["deleted"]["interests"] == 1
    assert client.get(f"/users/{user}/interest", headers=auth(keys["read"])).status_code == 404
    after = search(client, keys["read"], user_id=user)
    assert not after["personalized"]


def test_health_metrics_and_openapi(client: FlaskClient, worker: Any) -> None:
    health = client.get("/health")
    assert health.status_code == 200 and health.json["workers"]["count"] >= 1
    assert health.json["workers"]["queues_without_consumer"] == []
    assert health.json["model"]["version"] == "configured"  # no `model switch` here
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "es_interest_http_requests_total" in metrics
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.") and "/search" in spec["paths"]
    assert "q" in spec["paths"]["/search"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["properties"]
