"""OpenSearch (2.x and 3.x) with its k-NN plugin: ``knn_vector`` fields on Lucene's HNSW, and
kNN as a query clause."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from plugin.engine.base import JSON, Engine, EngineKind


class OpenSearchEngine(Engine):
    kind = EngineKind.OPENSEARCH
    client_library = "opensearchpy"

    def index_settings(self, knn: bool = True) -> JSON:
        settings: JSON = {"index.knn": knn}
        if knn and self.version_tuple >= (3, 0):
            # k-NN 3.x's derived source (vectors left out of the stored _source, rebuilt at fetch)
            # failed every fetch of a vector field once a scroll over the index had ended
            # (devstack/README.md); the product reads vectors back.
            settings["index.knn.derived_source.enabled"] = False
        return settings

    def vector_field(self, dims: int, *, m: int = 16, ef_construction: int = 100,
                     quantized: bool = False, indexed: bool = True) -> JSON:
        if not indexed:
            return {"type": "knn_vector", "dimension": dims}
        return {
            "type": "knn_vector",
            "dimension": dims,
            "method": {
                "name": "hnsw",
                # Lucene's HNSW needs no native library (faiss/nmslib are not shipped).
                "engine": "lucene",
                "space_type": "cosinesimil",
                "parameters": {"m": m, "ef_construction": ef_construction},
            },
        }

    def add_knn(self, body: JSON, *, field_name: str, vector: Iterable[float], k: int,
                num_candidates: int | None = None, boost: float = 1.0,
                filter_query: JSON | None = None) -> None:
        # No top-level knn: the clause joins the query's should clauses, which add up alike.
        query = body.setdefault("query", {"bool": {"should": []}})
        if "bool" not in query or "should" not in query["bool"]:
            body["query"] = query = {"bool": {"should": [query]}}
        query["bool"]["should"].append(self.knn_query(field_name, vector, k, filter_query,
                                                      boost))

    def knn_query(self, field_name: str, vector: Iterable[float], k: int,
                  filter_query: JSON | None = None, boost: float = 1.0) -> JSON:
        clause: JSON = {"vector": [float(x) for x in vector], "k": k, "boost": boost}
        if filter_query is not None:
            clause["filter"] = filter_query
        return {"knn": {field_name: clause}}

    def painless_cosine(self, vector_param: str, field_name: str) -> str:
        # The k-NN plugin's scoring function over a knn_vector doc value.
        return f"cosineSimilarity(params.{vector_param}, doc['{field_name}'])"

    def _with_timeout(self, timeout_s: float) -> tuple[Any, JSON]:
        return self.client, {"request_timeout": timeout_s}

    def api_error(self, exc: Exception) -> tuple[int, Any] | None:
        import opensearchpy

        if isinstance(exc, opensearchpy.TransportError) and isinstance(exc.status_code, int):
            return exc.status_code, exc.info
        return None
