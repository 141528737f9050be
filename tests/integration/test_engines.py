"""What each engine of `make up` must be for the product: versions, vector mappings that
keep their values, and the `linear` retriever's arithmetic where the server has one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import elasticsearch
import pytest

from plugin.documents import POPULARITY_FIELD
from plugin.engine import EngineKind
from plugin.services import Services
from plugin.strategies import popularity_clause

pytestmark = pytest.mark.integration


def test_one_client_line_talks_to_every_server(services: Services) -> None:
    engine = services.engine
    info = engine.client.info()
    assert info["version"]["number"] == engine.version
    if engine.kind is EngineKind.ELASTICSEARCH:
        # The 8.x client: 8.x servers, and 9.x servers through the compatibility header.
        assert elasticsearch.__versionstr__.startswith("8.")
        assert engine.version_tuple[0] in (8, 9)


def test_document_vectors_are_deliberately_mapped_and_kept(services: Services) -> None:
    engine, alias = services.engine, services.settings.docs_alias
    mapping = next(iter(engine.client.indices.get_mapping(index=alias).values()))
    field = mapping["mappings"]["properties"]["embedding"]
    if engine.kind is EngineKind.ELASTICSEARCH:
        # Never the server's default (BBQ on 9.1+, int8 on 8.14+ for 384-dim floats).
        assert field["index_options"]["type"] == "hnsw"
        assert field["similarity"] == "cosine"
    else:
        assert field["method"]["engine"] == "lucene"
    vector = [round(0.01 * (i % 17) - 0.08, 4) for i in range(services.embedder.dims)]
    doc_id = f"keep-{uuid.uuid4().hex[:6]}"
    engine.client.index(index=alias, id=doc_id, refresh=True,
                        body={"doc_id": doc_id, "title": "kept", "embedding": vector})
    try:
        # 9.2+ would drop vectors from _source by default; the product reads them back.
        stored = engine.client.get(index=alias, id=doc_id)["_source"]["embedding"]
        assert stored == pytest.approx(vector, abs=1e-6)
        hit = engine.search(alias, {"query": {"ids": {"values": [doc_id]}}})["hits"]["hits"][0]
        assert hit["_source"]["embedding"] == pytest.approx(vector, abs=1e-6)
    finally:
        engine.client.delete(index=alias, id=doc_id, refresh=True)


def test_the_popularity_terms_weight_scales_it(services: Services) -> None:
    """``knn_linear`` and ``script_score`` add ``weight * log10(1 + popularity)``: the weight
    must reach the score (a function_score query's own boost does not, under replace)."""
    engine, alias = services.engine, services.settings.docs_alias
    doc_id = f"popular-{uuid.uuid4().hex[:6]}"
    engine.client.index(index=alias, id=doc_id, refresh=True,
                        body={"doc_id": doc_id, "title": "popular", POPULARITY_FIELD: 99.0})
    try:
        for weight in (0.5, 1.0, 3.0):
            hits = engine.search(alias, {"query": {"bool": {
                "filter": [{"ids": {"values": [doc_id]}}],
                "should": [popularity_clause(weight)]}}})["hits"]["hits"]
            assert hits[0]["_score"] == pytest.approx(weight * 2.0, rel=1e-5)
    finally:
        engine.client.delete(index=alias, id=doc_id, refresh=True)


@pytest.fixture
def linear_index(services: Services) -> Iterator[str]:
    engine = services.engine
    if not engine.has_linear_retriever(services.settings.docs_alias):
        pytest.skip(f"{engine.kind.value} {engine.version} has no `linear` retriever")
    name = f"{services.settings.index_prefix}-linear-{uuid.uuid4().hex[:6]}"
    engine.client.indices.create(index=name, body={
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"properties": {"text": {"type": "text"},
                                    "v": {"type": "dense_vector", "dims": 2, "index": True,
                                          "similarity": "cosine"}}}})
    docs = {"1": ("dog dog cat", [1.0, 0.0]), "2": ("dog", [0.0, 1.0]),
            "3": ("dog bird fish", [0.6, 0.8]), "4": ("dog bird", [0.8, 0.6]),
            "5": ("bird", [0.0, 1.0])}
    for doc_id, (text, vector) in docs.items():
        engine.client.index(index=name, id=doc_id, body={"text": text, "v": vector})
    engine.client.indices.refresh(index=name)
    yield name
    engine.client.indices.delete(index=name)


def _minmax(scores: dict[str, float]) -> dict[str, float]:
    low, high = min(scores.values()), max(scores.values())
    return {k: (v - low) / (high - low) if high > low else 1.0 for k, v in scores.items()}


def test_a_force_merge_leaves_one_segment_with_the_latest_copy(
        services: Services) -> None:
    engine = services.engine
    index = f"{services.settings.index_prefix}-merge-{uuid.uuid4().hex[:6]}"
    engine.client.indices.create(index=index)
    try:
        for n in range(3):  # three segments, two of them holding an old copy
            engine.client.index(index=index, id="1", body={"n": n}, refresh=True)
        engine.force_merge(index)
        engine.refresh(index)
        # (The old copies may stay as soft deletes the engine retains for recovery; they
        # are out of searches either way.)
        stats = engine.client.indices.stats(index=index)["_all"]["primaries"]
        assert (stats["segments"]["count"], stats["docs"]["count"]) == (1, 1)
        assert engine.search(index, {"query": {"match_all": {}}})["hits"]["hits"][0][
            "_source"] == {"n": 2}
    finally:
        engine.client.indices.delete(index=index)


def test_linear_retriever_sums_weighted_minmax_scores(services: Services,
                                                      linear_index: str) -> None:
    """The request shape of the linear_retriever strategy, checked against the sum computed
    here from each child's own scores (a document missing from a child gets 0 from it)."""
    engine = services.engine
    text = {"match": {"text": "dog"}}
    knn = {"field": "v", "query_vector": [0.0, 1.0], "k": 3, "num_candidates": 10}
    bm25 = {h["_id"]: h["_score"] for h in engine.search(
        linear_index, {"query": text, "size": 10})["hits"]["hits"]}
    near = {h["_id"]: h["_score"] for h in engine.search(
        linear_index, {"knn": knn, "size": 10})["hits"]["hits"]}
    assert set(near) != set(bm25)  # "5" is near but does not match; "1" matches but is far
    expected: dict[str, float] = {}
    for scores, weight in ((_minmax(bm25), 1.0), (_minmax(near), 2.0)):
        for doc_id, score in scores.items():
            expected[doc_id] = expected.get(doc_id, 0.0) + weight * score
    body = {"size": 10, "retriever": {"linear": {"rank_window_size": 10, "retrievers": [
        {"retriever": {"standard": {"query": text}}, "weight": 1.0, "normalizer": "minmax"},
        {"retriever": {"knn": knn}, "weight": 2.0, "normalizer": "minmax"}]}}}
    hits = engine.search(linear_index, body)["hits"]["hits"]
    assert [h["_id"] for h in hits] == sorted(expected, key=lambda k: (-expected[k], k))
    for hit in hits:
        assert hit["_score"] == pytest.approx(expected[hit["_id"]], abs=1e-5)
