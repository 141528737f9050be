"""Elasticsearch (8.x and 9.x): ``dense_vector`` fields, top-level ``knn`` and retrievers."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar

from plugin.engine.base import JSON, MAX_KNN_CANDIDATES, Engine, EngineKind, knn_candidates


class ElasticsearchEngine(Engine):
    kind = EngineKind.ELASTICSEARCH
    client_library = "elasticsearch"
    eland_readable = True
    # Elasticsearch's clients check for this header on every response.
    response_headers: ClassVar[dict[str, str]] = {"X-Elastic-Product": "Elasticsearch"}
    TIMEOUT_STEP_S: ClassVar[float] = 0.05
    MAX_TIMEOUT_CLIENTS: ClassVar[int] = 256

    def index_settings(self, knn: bool = True) -> JSON:
        if self.version_tuple >= (9, 2):
            # 9.2+ leaves vectors out of _source unless told otherwise. The product reads them
            # back (score components, document vectors for folds, setup --reindex, rebuilds),
            # so it keeps them, at the cost of the vectors' JSON in stored _source.
            return {"index.mapping.exclude_source_vectors": False}
        return {}

    def vector_field(self, dims: int, *, m: int = 16, ef_construction: int = 100,
                     quantized: bool = False, indexed: bool = True) -> JSON:
        if not indexed:
            return {"type": "dense_vector", "dims": dims, "index": False}
        # int8_hnsw exists from Elasticsearch 8.12; an older server rejects it with its reason.
        return {"type": "dense_vector", "dims": dims, "index": True, "similarity": "cosine",
                "index_options": {"type": "int8_hnsw" if quantized else "hnsw", "m": m,
                                  "ef_construction": ef_construction}}

    def add_knn(self, body: JSON, *, field_name: str, vector: Iterable[float], k: int,
                num_candidates: int | None = None, boost: float = 1.0,
                filter_query: JSON | None = None) -> None:
        width = knn_candidates(k) if num_candidates is None else num_candidates
        knn: JSON = {"field": field_name, "query_vector": [float(x) for x in vector], "k": k,
                     "num_candidates": min(MAX_KNN_CANDIDATES, max(width, k)), "boost": boost}
        if filter_query is not None:
            knn["filter"] = filter_query
        body.setdefault("knn", []).append(knn)

    def knn_query(self, field_name: str, vector: Iterable[float], k: int,
                  filter_query: JSON | None = None, boost: float = 1.0) -> JSON:
        knn: JSON = {"field": field_name, "query_vector": [float(x) for x in vector],
                     "num_candidates": knn_candidates(k), "boost": boost}
        if filter_query is not None:
            knn["filter"] = filter_query
        return {"knn": knn}

    def knn_retriever(self, field_name: str, vector: Iterable[float], k: int,
                      filter_query: JSON | None = None) -> JSON:
        """A ``knn`` retriever (Elasticsearch 8.14+), for use inside a ``linear`` retriever."""
        knn: JSON = {"field": field_name, "query_vector": [float(x) for x in vector], "k": k,
                     "num_candidates": knn_candidates(k)}
        if filter_query is not None:
            knn["filter"] = filter_query
        return {"knn": knn}

    def painless_cosine(self, vector_param: str, field_name: str) -> str:
        return f"cosineSimilarity(params.{vector_param}, '{field_name}')"

    def has_linear_retriever(self, index: str) -> bool:
        """Whether the server takes a ``linear`` retriever (8.18+, where its module is
        installed and licensed), asked once with a request on ``index`` that matches nothing.
        A refusal (400: unknown retriever, 403: licence) is remembered; any other failure (the
        index does not exist yet, say) is asked again next time."""
        if "linear_retriever" in self._capabilities:
            return self._capabilities["linear_retriever"]
        if self.version_tuple < (8, 18):
            self._capabilities["linear_retriever"] = False
            return False
        nothing: JSON = {"standard": {"query": {"match_none": {}}}}
        probe = {"size": 0, "retriever": {"linear": {"retrievers": [
            {"retriever": nothing, "weight": 1.0, "normalizer": "minmax"},
            {"retriever": nothing, "weight": 1.0, "normalizer": "minmax"}]}}}
        try:
            self.client.search(index=index, body=probe)
        except Exception as exc:
            refused = self.api_error(exc)
            if refused is None:
                raise
            if refused[0] in (400, 403):
                self._capabilities["linear_retriever"] = False
            return False
        self._capabilities["linear_retriever"] = True
        return True

    def _with_timeout(self, timeout_s: float) -> tuple[Any, JSON]:
        """``options()`` builds a whole client (every API namespace), about a millisecond on
        each search: one is kept per step of ``TIMEOUT_STEP_S``, and a deadline may run up to
        a step late."""
        step = max(1, math.ceil(timeout_s / self.TIMEOUT_STEP_S))
        client = self._timeout_clients.get(step)
        if client is None:
            if len(self._timeout_clients) >= self.MAX_TIMEOUT_CLIENTS:
                self._timeout_clients.clear()
            client = self.client.options(request_timeout=step * self.TIMEOUT_STEP_S)
            self._timeout_clients[step] = client
        return client, {}

    def api_error(self, exc: Exception) -> tuple[int, Any] | None:
        import elasticsearch

        if isinstance(exc, elasticsearch.ApiError):
            return exc.meta.status, exc.body
        return None
