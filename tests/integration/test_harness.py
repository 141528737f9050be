"""The foundation: each real engine, Redis, the model and a real Celery worker."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from bench.common import child_pids
from plugin.engine import EngineKind
from plugin.services import Services

pytestmark = pytest.mark.integration

TEXTS = {
    "kitten": "a small kitten playing with a ball of yarn",
    "cat": "an old cat sleeping on the sofa",
    "stocks": "the stock market fell sharply after the interest rate decision",
}


@pytest.fixture
def scratch_index(services: Services) -> Iterator[str]:
    """An index with a vector field and three documents embedded by the real model."""
    engine = services.engine
    name = f"{services.settings.index_prefix}-scratch-{uuid.uuid4().hex[:6]}"
    engine.client.indices.create(index=name, body={
        "settings": {"number_of_shards": 1, "number_of_replicas": 0, **engine.index_settings()},
        "mappings": {"properties": {
            "name": {"type": "keyword"},
            "text": {"type": "text"},
            "embedding": engine.vector_field(services.embedder.dims),
        }},
    })
    vectors = services.embedder.encode(list(TEXTS.values()))
    for (key, text), vector in zip(TEXTS.items(), vectors, strict=True):
        engine.client.index(index=name, id=key, refresh=True,
                            body={"name": key, "text": text, "embedding": vector.tolist()})
    yield name
    engine.client.indices.delete(index=name)


def test_knn_orders_by_meaning(services: Services, scratch_index: str) -> None:
    query = services.embedder.encode_one("cute kitten").tolist()
    body: dict = {"size": 3, "_source": ["name"]}
    services.engine.add_knn(body, field_name="embedding", vector=query, k=3, num_candidates=10)
    hits = services.engine.search(scratch_index, body)["hits"]["hits"]
    assert [h["_id"] for h in hits] == ["kitten", "cat", "stocks"]
    scores = [h["_score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[2]


def test_painless_cosine_matches_numpy(services: Services, scratch_index: str) -> None:
    engine = services.engine
    if not engine.has_painless():
        pytest.skip(f"{engine.kind.value} {engine.version} at {services.settings.engine_url} "
                    "has no Painless (make up's scripts-off engine)")
    query = services.embedder.encode_one("cute kitten")
    body = {"size": 3, "query": {"script_score": {
        "query": {"match_all": {}},
        "script": {"source": engine.painless_cosine("q", "embedding") + " + 1.0",
                   "params": {"q": query.tolist()}},
    }}}
    hits = engine.search(scratch_index, body)["hits"]["hits"]
    vectors = dict(zip(TEXTS, services.embedder.encode(list(TEXTS.values())), strict=True))
    expected = {key: float(np.dot(query, vec)) + 1.0 for key, vec in vectors.items()}
    assert [h["_id"] for h in hits] == sorted(expected, key=lambda k: -expected[k])
    for hit in hits:
        assert hit["_score"] == pytest.approx(expected[hit["_id"]], abs=1e-4)


def test_elasticsearch_root_and_eland(services: Services, scratch_index: str) -> None:
    engine = services.engine
    if engine.kind is not EngineKind.ELASTICSEARCH:
        pytest.skip("GET / through the elasticsearch client and eland are Elasticsearch-only")
    import eland as ed

    info = engine.client.info()
    assert info["version"]["number"] == engine.version
    assert info["tagline"] == "You Know, for Search"
    frame = ed.DataFrame(engine.client, es_index_pattern=scratch_index, columns=["name", "text"])
    assert frame.shape == (3, 2)
    local = frame.to_pandas()
    assert sorted(local["name"]) == sorted(TEXTS)
    assert local.loc["cat", "text"] == TEXTS["cat"]


def test_redis_round_trip(services: Services) -> None:
    key = f"test:{uuid.uuid4().hex}"
    services.redis.set(key, "value", ex=60)
    assert services.redis.get(key) == b"value"
    services.redis.delete(key)
    assert services.redis.get(key) is None


def test_task_runs_in_a_real_worker_process(worker, celery_client) -> None:  # type: ignore[no-untyped-def]
    result = celery_client.send_task("es_interest.ping").get(timeout=60)
    assert result["pid"] != os.getpid()
    assert result["pid"] in child_pids(worker.process.pid) | {worker.process.pid}
    assert result["dims"] == 384
    # The process that runs tasks froze what start-up built (plugin/cli.py).
    assert result["frozen_objects"] > 10_000

