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
                                   "path": "top_tags"}}}}, "reads another index"),
    ({"query": {"terms": {"tags": {"id": "u1", "path": "top_tags"}}}}, "terms lookup"),
    ({"query": {"more_like_this": {"fields": ["title"],
                                   "like": [{"_index": "es-interest-events", "_id": "1"}]}}},
     "reads another index"),
    ({"query": {"more_like_this": {"fields": ["title"], "like": "x"}}},
     "query type 'more_like_this'"),
    ({"query": {"percolate": {"field": "q", "index": "other", "id": "1"}}},
     "reads another index"),
    ({"query": {"pinned": {"ids": ["1"], "organic": {}}}}, "'pinned'"),
    ({"query": {"bool": {"should": [{"match_all": {}}, {"geo_shape": {"f": {
        "indexed_shape": {"index": "shapes", "id": "1"}}}}]}}}, "reads another index"),
    ({"query": {"bool": {"should": [{"match_all": {}}, {"geo_shape": {"f": {}}}]}}},
     "query type 'geo_shape'"),
    # Issue 19: every place a query can nest, checked by the generic walk or the allow-list.
    ({"aggs": {"s": {"significant_terms": {"field": "tags", "background_filter": {
        "terms": {"doc_id": {"index": "es-interest-events", "id": "e1", "path": "doc_id"}}}}}}},
     "reads another index"),
    ({"aggs": {"s": {"significant_terms": {"field": "tags", "background_filter": {
        "more_like_this": {"like": "x"}}}}}}, "query type 'more_like_this'"),
    ({"aggs": {"f": {"filter": {"terms": {"tags": {"index": "x", "id": "1", "path": "p"}}}}}},
     "reads another index"),
    ({"aggs": {"f": {"filters": {"filters": {"a": {"percolate": {"field": "q",
                                                                 "document": {}}}}}}}},
     "query type 'percolate'"),
    ({"aggs": {"t": {"significant_text": {"field": "title"}}}}, "'significant_text'"),
    ({"aggs": {"t": {"adjacency_matrix": {"filters": {"a": {"match_all": {}}}}}}},
     "'adjacency_matrix'"),
    ({"aggs": {"t": {"composite": {"sources": [{"t": {"terms": {"field": "tags"}}}]}}}},
     "'composite'"),
    ({"rescore": {"query": {"rescore_query": {"match_all": {}}}}}, "'rescore' is not served"),
    ({"collapse": {"field": "tags", "inner_hits": {"name": "x"}}}, "'collapse' is not served"),
    ({"query": {"bool": {"filter": [{"wrapper": {"query": "e30="}}]}}}, "query type 'wrapper'"),
    ({"post_filter": {"nested": {"path": "x", "query": {"match_all": {}}}}},
     "query type 'nested'"),
    ({"query": {"match": {"title": "\ud800"}}}, "lone surrogate"),
    ({"query": {"bool": {"must": {"match": {"title": {"query": "x",
                                                      "_index": "events"}}}}}},
     "reads another index"),
    ({"aggs": {"t": {"terms": {"field": "tags", "size": MAX_BUCKETS + 1}}}}, "is over 1000"),
    ({"aggs": {"t": {"scripted_metric": {}}}}, "scripts and code are refused"),
    ({"knn": {"field": "embedding", "query_vector": [1.0], "k": WINDOW + 1}}, "k' is over 1000"),
    ({"knn": {"field": "e", "query_vector_builder": {}}}, "query_vector_builder"),
    ({"size": float("inf")}, "finite whole number"),
    ({"from": float("-inf")}, "finite whole number"),
    ({"suggest": {}}, "scripts and code are refused here"),
    ({"query": {"bool": {"must": {"match_all": {}}}, "match": {}}}, "exactly one query"),
])
def test_reaching_elsewhere_is_refused_with_its_path(body: dict[str, Any], reason: str) -> None:
    with pytest.raises(RefusedBody, match=reason):
        check_body(body, WINDOW)


def test_a_body_nested_deeper_than_any_search_is_refused_without_recursion() -> None:
    body: dict[str, Any] = {"match_all": {}}
    for _ in range(50_000):
        body = {"bool": {"must": [body]}}
    with pytest.raises(RefusedBody, match="nests deeper"):
        check_body({"query": body}, WINDOW)
