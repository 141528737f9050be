"""The proxy's allow-list: plain searches pass, anything that reads elsewhere is named."""

from __future__ import annotations

from typing import Any

import pytest

from plugin.api.proxy_policy import MAX_BUCKETS, RefusedBody, check_body

WINDOW = 1000


@pytest.mark.parametrize("body", [
    {},
    {"query": {"match": {"title": "space"}}, "size": 10, "from": 20},
    {"query": {"bool": {"must": [{"multi_match": {"query": "x", "fields": ["title"]}}],
                        "filter": {"terms": {"tags": ["a", "b"]}},
                        "must_not": [{"range": {"year": {"lt": 1990}}}]}}},
    {"query": {"constant_score": {"filter": {"term": {"tags": "a"}}}}, "sort": ["_score"]},
    {"aggs": {"tags": {"terms": {"field": "tags", "size": 50},
                       "aggs": {"top": {"top_hits": {"size": 3}}}}}},
    {"knn": {"field": "embedding", "query_vector": [0.1, 0.2], "k": 10, "num_candidates": 100,
             "filter": {"term": {"tags": "a"}}}},
])
def test_plain_searches_pass(body: dict[str, Any]) -> None:
    check_body(body, WINDOW)


@pytest.mark.parametrize(("body", "reason"), [
    # Finding 10: clauses that read another index (a user's events, interests).
    ({"query": {"terms": {"tags": {"index": "es-interest-interests", "id": "u1",
                                   "path": "top_tags"}}}}, "terms lookup"),
    ({"query": {"more_like_this": {"fields": ["title"],
                                   "like": [{"_index": "es-interest-events", "_id": "1"}]}}},
     "query type 'more_like_this'"),
    ({"query": {"percolate": {"field": "q", "index": "other", "id": "1"}}}, "'percolate'"),
    ({"query": {"pinned": {"docs": [{"_index": "x", "_id": "1"}], "organic": {}}}},
     "'pinned'"),
    ({"query": {"bool": {"should": [{"match_all": {}}, {"geo_shape": {"f": {
        "indexed_shape": {"index": "shapes", "id": "1"}}}}]}}}, "query type 'geo_shape'"),
    ({"aggs": {"t": {"terms": {"field": "tags", "size": MAX_BUCKETS + 1}}}}, "is over 1000"),
    ({"aggs": {"t": {"scripted_metric": {}}}}, "aggregation 'scripted_metric'"),
    ({"knn": {"field": "embedding", "query_vector": [1.0], "k": WINDOW + 1}}, "k' is over 1000"),
    ({"knn": {"field": "e", "query_vector_builder": {}}}, "query_vector_builder"),
    ({"size": float("inf")}, "finite whole number"),
    ({"from": float("-inf")}, "finite whole number"),
    ({"suggest": {}}, "'suggest' is not served"),
    ({"query": {"bool": {"must": {"match_all": {}}}, "match": {}}}, "exactly one query"),
])
def test_reaching_elsewhere_is_refused_with_its_path(body: dict[str, Any], reason: str) -> None:
    with pytest.raises(RefusedBody, match=reason):
        check_body(body, WINDOW)
