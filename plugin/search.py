"""The query rewrite: one engine request that blends text relevance with vector similarities.

final = a·norm(bm25) + b·sim(q, d) + c·sim(u_long, d) + d·sim(u_short, d)

norm(bm25) = bm25 / (the query's best BM25 score), so the text term lies in [0, 1] for every
query, like the similarities ``sim = (1 + cos) / 2``; the best score comes from a first, cheap
request (one hit, no source).

Strategy ``knn_linear`` (no scripts): the BM25 clause plus one weighted kNN clause per vector;
the engine adds up each document's clause scores. A kNN clause scores ``(1 + cos) / 2`` and only
over its own top-k candidates, so a document outside a vector's candidates gets 0 for that term.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from plugin.engine import JSON
from plugin.services import Services

TEXT_FIELDS = ["title^2", "tags.text", "body"]


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


@dataclass
class SearchResult:
    hits: list[JSON]
    personalized: bool
    reason: str | None
    took_ms: float
    request: JSON = field(repr=False, default_factory=dict)


def load_user_vectors(services: Services, user_id: str) -> UserVectors:
    found = services.engine.get_versioned(services.settings.interests_alias, user_id)
    if found is None:
        return UserVectors()
    source = found[0]
    return UserVectors(source.get("interest_long"), source.get("interest_short"))


def text_query(query: str, boost: float = 1.0) -> JSON:
    return {"multi_match": {"query": query, "fields": TEXT_FIELDS, "boost": boost}}


def best_bm25(services: Services, query: str) -> float:
    """The top BM25 score of ``query``: the denominator of norm(bm25)."""
    response = services.engine.search(services.settings.docs_alias, {
        "size": 1, "_source": False, "track_total_hits": False, "query": text_query(query)})
    return float(response["hits"].get("max_score") or 0.0)


def knn_linear_request(
    services: Services,
    query: str,
    max_bm25: float,
    query_vector: list[float],
    user: UserVectors,
    weights: BlendWeights,
    size: int,
    candidates: int = 100,
) -> JSON:
    engine = services.engine
    body: JSON = {
        "size": size,
        "_source": {"excludes": ["embedding"]},
        "query": {"bool": {"should": [text_query(
            query, weights.bm25 / max_bm25 if max_bm25 > 0 else weights.bm25)]}},
    }
    k = max(size, candidates)
    vectors = [(query_vector, weights.query), (user.long, weights.interest_long),
               (user.short, weights.interest_short)]
    for vector, weight in vectors:
        if vector is not None and weight > 0:
            engine.add_knn(body, field_name="embedding", vector=vector, k=k,
                           num_candidates=2 * k, boost=weight)
    return body


def search(
    services: Services,
    query: str,
    user_id: str | None = None,
    size: int = 10,
    weights: BlendWeights | None = None,
) -> SearchResult:
    started = time.perf_counter()
    weights = weights or BlendWeights()
    query_vector = services.embedder.encode_one(query).tolist()
    user = UserVectors()
    reason: str | None = "no user_id"
    if user_id:
        user = load_user_vectors(services, user_id)
        reason = "user has no interest vector yet" if user.empty else None
    body = knn_linear_request(services, query, best_bm25(services, query), query_vector, user,
                              weights, size)
    response = services.engine.search(services.settings.docs_alias, body)
    hits = [_hit(h) for h in response["hits"]["hits"]]
    return SearchResult(hits, not user.empty, reason,
                        (time.perf_counter() - started) * 1000.0, body)


def _hit(hit: Mapping[str, Any]) -> JSON:
    source = hit.get("_source", {})
    return {"id": hit["_id"], "score": hit.get("_score"), "title": source.get("title"),
            "tags": source.get("tags", [])}
