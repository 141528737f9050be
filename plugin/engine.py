"""Every difference between Elasticsearch and OpenSearch lives here, and nowhere else.

The rest of the code asks an :class:`Engine` for a vector field mapping, a kNN clause, the
Painless cosine expression or a client call, and never checks which engine it talks to.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from plugin.config import Settings

JSON = dict[str, Any]


class EngineKind(enum.StrEnum):
    ELASTICSEARCH = "elasticsearch"
    OPENSEARCH = "opensearch"


class EngineError(RuntimeError):
    """The engine is unreachable, or answered in a way the product cannot use."""


class EngineBusy(EngineError):
    """The engine refused for load (429: a circuit breaker or full queues; 502-504): nothing
    is wrong with the request, so it is worth sending again later."""


# When the request being served must have its answer (time.monotonic()), or None: every
# engine call of one request shares one budget, however many calls it makes.
_DEADLINE: ContextVar[float | None] = ContextVar("engine_deadline", default=None)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Engine calls made inside share ``seconds`` between them (an API request's budget)."""
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


# Answers that mean "not now" rather than "not this".
BUSY_STATUSES = frozenset({429, 502, 503, 504})


class BulkItem(NamedTuple):
    """One action's answer in a bulk request: its operation, its id, and the engine's reply."""

    op: str
    id: str
    info: JSON

    @property
    def reason(self) -> str:
        """The engine's reason for a failed item, as ``type: reason``."""
        err = self.info.get("error", {})
        if isinstance(err, Mapping):
            return f"{err.get('type', 'error')}: {err.get('reason', '')}"
        return str(err)


@dataclass
class BulkOutcome:
    """What one bulk request did, sorted by what a caller does next: ``written`` items,
    ``conflicts`` (409: someone wrote first, or the item exists), ``missing`` (404), ``busy``
    (refused for load: send again later) and ``failed`` (refused for its content)."""

    written: list[BulkItem] = field(default_factory=list)
    conflicts: list[BulkItem] = field(default_factory=list)
    missing: list[BulkItem] = field(default_factory=list)
    busy: list[BulkItem] = field(default_factory=list)
    failed: list[BulkItem] = field(default_factory=list)

    def add(self, ok: bool, item: Mapping[str, Any]) -> None:
        op, info = next(iter(item.items()))
        entry = BulkItem(op, str(info.get("_id")), info)
        status = info.get("status")
        if ok:
            self.written.append(entry)
        elif status == 409:
            self.conflicts.append(entry)
        elif status == 404:
            self.missing.append(entry)
        elif status in BUSY_STATUSES:
            self.busy.append(entry)
        else:
            self.failed.append(entry)

    def raise_if_busy(self, what: str) -> None:
        """:class:`EngineBusy` (the task is retried) if any item was refused for load."""
        if self.busy:
            raise EngineBusy(f"{len(self.busy)} {what}: {self.busy[0].reason}")

    def raise_if_refused(self, what: str, *, handled: Collection[int] = ()) -> None:
        """:class:`EngineBusy` if any item was refused for load, else ``RuntimeError`` for
        items refused for any other reason the caller does not handle itself (``handled``:
        409 for conflicts, 404 for missing documents)."""
        self.raise_if_busy(what)
        refused = [*self.failed, *(self.conflicts if 409 not in handled else ()),
                   *(self.missing if 404 not in handled else ())]
        if refused:
            raise RuntimeError(f"{len(refused)} {what}: {refused[0].reason}")


@dataclass
class Engine:
    kind: EngineKind
    client: Any  # elasticsearch.Elasticsearch or opensearchpy.OpenSearch
    version: str
    # Searches answer people: past this they fail (and the API says 503) rather than hang.
    search_timeout_s: float = 30.0
    # The cluster's identity (`GET /`): which deployment a Redis namespace belongs to.
    cluster_uuid: str = ""
    _capabilities: dict[str, bool] = field(default_factory=dict, repr=False)

    @property
    def version_tuple(self) -> tuple[int, int]:
        """(major, minor) of the server, e.g. (9, 5)."""
        major, _, rest = self.version.partition(".")
        minor = rest.split(".", 1)[0]
        return int(major), int(minor) if minor.isdigit() else 0

    # -- mappings ---------------------------------------------------------------------------

    def index_settings(self, knn: bool = True) -> JSON:
        """Settings of an index whose vector fields are searched by kNN (``knn``) or not."""
        if self.kind is EngineKind.OPENSEARCH:
            return {"index.knn": knn}
        if self.version_tuple >= (9, 2):
            # 9.2+ leaves vectors out of _source unless told otherwise. The product reads them
            # back (score components, document vectors for folds, setup --reindex, rebuilds),
            # so it keeps them, at the cost of the vectors' JSON in stored _source.
            return {"index.mapping.exclude_source_vectors": False}
        return {}

    def vector_field(
        self,
        dims: int,
        *,
        m: int = 16,
        ef_construction: int = 100,
        quantized: bool = False,
        indexed: bool = True,
    ) -> JSON:
        """A cosine-similarity HNSW vector field of ``dims`` dimensions.

        ``indexed=False``: stored for scripts and readers, with no graph to build on writes
        (user vectors are read by id, never searched by kNN).
        """
        if not indexed:
            if self.kind is EngineKind.OPENSEARCH:
                return {"type": "knn_vector", "dimension": dims}
            return {"type": "dense_vector", "dims": dims, "index": False}
        if self.kind is EngineKind.OPENSEARCH:
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
        options: JSON = {"type": "int8_hnsw" if quantized else "hnsw", "m": m,
                         "ef_construction": ef_construction}
        mapping: JSON = {"type": "dense_vector", "dims": dims, "index": True,
                         "similarity": "cosine"}
        # int8_hnsw exists from Elasticsearch 8.12; an older server rejects it with its reason.
        mapping["index_options"] = options
        return mapping

    # -- queries ----------------------------------------------------------------------------

    def add_knn(
        self,
        body: JSON,
        *,
        field_name: str,
        vector: Iterable[float],
        k: int,
        num_candidates: int,
        boost: float = 1.0,
        filter_query: JSON | None = None,
    ) -> None:
        """Add one kNN clause whose score (``(1 + cos) / 2``) is summed with the query's."""
        values = [float(x) for x in vector]
        if self.kind is EngineKind.OPENSEARCH:
            clause: JSON = {"vector": values, "k": k, "boost": boost}
            if filter_query is not None:
                clause["filter"] = filter_query
            query = body.setdefault("query", {"bool": {"should": []}})
            if "bool" not in query or "should" not in query["bool"]:
                body["query"] = query = {"bool": {"should": [query]}}
            query["bool"]["should"].append({"knn": {field_name: clause}})
            return
        knn: JSON = {"field": field_name, "query_vector": values, "k": k,
                     "num_candidates": min(10_000, max(num_candidates, k)), "boost": boost}
        if filter_query is not None:
            knn["filter"] = filter_query
        body.setdefault("knn", []).append(knn)

    def knn_query(self, field_name: str, vector: Iterable[float], k: int,
                  filter_query: JSON | None = None, boost: float = 1.0) -> JSON:
        """A kNN *query* clause (usable inside bool): OpenSearch, or Elasticsearch 8.12+."""
        values = [float(x) for x in vector]
        if self.kind is EngineKind.OPENSEARCH:
            clause: JSON = {"vector": values, "k": k, "boost": boost}
            if filter_query is not None:
                clause["filter"] = filter_query
            return {"knn": {field_name: clause}}
        knn: JSON = {"field": field_name, "query_vector": values,
                     "num_candidates": min(10_000, 2 * k), "boost": boost}
        if filter_query is not None:
            knn["filter"] = filter_query
        return {"knn": knn}

    def knn_retriever(self, field_name: str, vector: Iterable[float], k: int,
                      filter_query: JSON | None = None) -> JSON:
        """A ``knn`` retriever (Elasticsearch 8.14+), for use inside a ``linear`` retriever."""
        knn: JSON = {"field": field_name, "query_vector": [float(x) for x in vector], "k": k,
                     "num_candidates": min(10_000, 2 * k)}
        if filter_query is not None:
            knn["filter"] = filter_query
        return {"knn": knn}

    def blend_script(self, field_name: str) -> str:
        """The blend's Painless source: a constant per engine and field, never request data.

        Params: a, b, c, d (weights), max_bm25, q, ul, us (query, long, short vectors).
        """
        def sim(param: str) -> str:
            return f"(1.0 + {self.painless_cosine(param, field_name)}) / 2.0"

        # User terms only for documents that match the query's words (_score > 0: the kNN
        # recall clauses score 0), as in knn_linear: personalization re-orders what was found.
        return (
            "double s = params.a * Math.min(1.0, _score / params.max_bm25)"
            f" + params.b * {sim('q')};"
            f" if (_score > 0 && params.c > 0) {{ s += params.c * {sim('ul')}; }}"
            f" if (_score > 0 && params.d > 0) {{ s += params.d * {sim('us')}; }}"
            " return s;"
        )

    def painless_cosine(self, vector_param: str, field_name: str) -> str:
        """Painless expression for the cosine similarity (in [-1, 1]) of a param and a field."""
        if self.kind is EngineKind.OPENSEARCH:
            # k-NN plugin's scoring function over a knn_vector doc value.
            return f"cosineSimilarity(params.{vector_param}, doc['{field_name}'])"
        return f"cosineSimilarity(params.{vector_param}, '{field_name}')"

    def has_painless(self) -> bool:
        """Whether the node runs Painless (the Maven-built Elasticsearch here does not)."""
        if "painless" not in self._capabilities:
            info = self.client.nodes.info(metric="plugins")
            names = {
                module.get("name")
                for node in info.get("nodes", {}).values()
                for module in node.get("modules", []) + node.get("plugins", [])
            }
            self._capabilities["painless"] = "lang-painless" in names
        return self._capabilities["painless"]

    def has_linear_retriever(self, index: str) -> bool:
        """Whether the server takes a ``linear`` retriever (Elasticsearch 8.18+, where its
        module is installed and licensed), asked once with a request on ``index`` that
        matches nothing. A refusal (400: unknown retriever, 403: licence) is remembered; any
        other failure (the index does not exist yet, say) is asked again next time."""
        if "linear_retriever" in self._capabilities:
            return self._capabilities["linear_retriever"]
        if self.kind is not EngineKind.ELASTICSEARCH or self.version_tuple < (8, 18):
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

    # -- calls ------------------------------------------------------------------------------

    def _call(self, method: str, timeout_s: float | None = None, **params: Any) -> Any:
        """A client call within ``timeout_s`` and what is left of the request's deadline
        (both optional; a stalled engine then raises a timeout)."""
        end = _DEADLINE.get()
        if end is not None:
            left = end - time.monotonic()
            if left <= 0:
                raise EngineError("the request's time budget (ES_INTEREST_SEARCH_TIMEOUT_S) "
                                  "ran out before the engine answered")
            timeout_s = left if timeout_s is None else min(timeout_s, left)
        if timeout_s is None:
            return getattr(self.client, method)(**params)
        if self.kind is EngineKind.OPENSEARCH:
            return getattr(self.client, method)(request_timeout=timeout_s, **params)
        return getattr(self.client.options(request_timeout=timeout_s), method)(**params)

    def search(self, index: str, body: Mapping[str, Any], **params: Any) -> JSON:
        """One search within ``search_timeout_s`` (a stalled engine raises a timeout)."""
        return dict(self._call("search", self.search_timeout_s, index=index, body=dict(body),
                               **params))

    def get_versioned(self, index: str, doc_id: str) -> tuple[JSON, int, int] | None:
        """A document's source with its ``_seq_no`` and ``_primary_term``, or None."""
        try:
            doc = self._call("get", index=index, id=doc_id)
        except self._not_found_error:
            return None
        return dict(doc["_source"]), int(doc["_seq_no"]), int(doc["_primary_term"])

    def get_source(self, index: str, doc_id: str, timeout_s: float) -> JSON | None:
        """One document's whole source within ``timeout_s`` (raises on timeout), or None.
        Unfiltered: a filter makes the engine parse and write the source again."""
        try:
            doc = self._call("get", timeout_s, index=index, id=doc_id)
        except self._not_found_error:
            return None
        return dict(doc["_source"])

    def mget_field(self, index: str, ids: Iterable[str], field_name: str) -> dict[str, Any]:
        """One field of each found document (a small read, for display)."""
        response = self._call("mget", index=index, body={"ids": sorted(ids)},
                              _source_includes=[field_name])
        return {d["_id"]: d["_source"].get(field_name) for d in response["docs"]
                if d.get("found")}

    def mget_versioned(self, index: str, ids: list[str]) -> dict[str, tuple[JSON, int, int]]:
        """Real-time multi-get: found documents (whole sources) with their ``_seq_no`` and
        ``_primary_term``."""
        found: dict[str, tuple[JSON, int, int]] = {}
        for start in range(0, len(ids), 1000):
            response = self._call("mget", index=index, body={"ids": ids[start:start + 1000]})
            for doc in response["docs"]:
                if doc.get("found"):
                    found[doc["_id"]] = (doc["_source"], int(doc["_seq_no"]),
                                         int(doc["_primary_term"]))
        return found

    @property
    def _not_found_error(self) -> type[Exception]:
        if self.kind is EngineKind.OPENSEARCH:
            from opensearchpy import NotFoundError as OsNotFound

            return OsNotFound
        from elasticsearch import NotFoundError as EsNotFound

        return EsNotFound

    def api_error(self, exc: Exception) -> tuple[int, Any] | None:
        """(HTTP status, body) when ``exc`` is the engine refusing a request, else None."""
        if self.kind is EngineKind.OPENSEARCH:
            import opensearchpy

            if isinstance(exc, opensearchpy.TransportError) and isinstance(exc.status_code, int):
                return exc.status_code, exc.info
            return None
        import elasticsearch

        if isinstance(exc, elasticsearch.ApiError):
            return exc.meta.status, exc.body
        return None

    def is_busy(self, exc: Exception) -> bool:
        """Whether ``exc`` is the engine refusing for load (see :data:`BUSY_STATUSES`)."""
        refused = self.api_error(exc)
        return refused is not None and refused[0] in BUSY_STATUSES

    def bulk(self, actions: Iterable[JSON], *, chunk_size: int = 500, refresh: bool | str = False,
             progress: Callable[[int], None] | None = None) -> BulkOutcome:
        """Send ``actions`` through the client's own ``helpers.streaming_bulk`` and sort each
        item's answer (:class:`BulkOutcome`). Items refused with 429 are sent again, with
        backoff, a few times before they count as busy (opensearch-py retries 429 only, so
        both engines do). A request refused as a whole counts against each of its items.
        ``progress`` hears of each item answered."""
        outcome = BulkOutcome()
        extra = {"refresh": refresh} if refresh else {}
        for ok, item in self._streaming_bulk(actions, chunk_size=chunk_size, raise_on_error=False,
                                             raise_on_exception=False, max_retries=3,
                                             initial_backoff=0.5, **extra):
            outcome.add(ok, item)
            if progress:
                progress(1)
        return outcome

    def _streaming_bulk(self, actions: Iterable[JSON],
                        **kwargs: Any) -> Iterable[tuple[bool, JSON]]:
        if self.kind is EngineKind.OPENSEARCH:
            from opensearchpy import helpers as os_helpers

            return os_helpers.streaming_bulk(self.client, actions, **kwargs)
        from elasticsearch import helpers as es_helpers

        return es_helpers.streaming_bulk(self.client, actions, **kwargs)

    def scan(self, index: str, query: JSON, **kwargs: Any) -> Iterable[JSON]:
        """Every hit of ``query``, through the client's ``helpers.scan`` (scroll)."""
        if self.kind is EngineKind.OPENSEARCH:
            from opensearchpy import helpers as os_helpers

            return os_helpers.scan(self.client, query=query, index=index, **kwargs)
        from elasticsearch import helpers as es_helpers

        return es_helpers.scan(self.client, query=query, index=index, **kwargs)

    def close(self) -> None:
        self.client.close()


def transient_errors() -> tuple[type[Exception], ...]:
    """Either client's errors worth a retry with backoff (connection trouble, timeouts)."""
    import elastic_transport
    import opensearchpy

    return (elastic_transport.ConnectionError, elastic_transport.ConnectionTimeout,
            opensearchpy.ConnectionError, opensearchpy.ConnectionTimeout)


def _opensearch_orjson() -> Any:
    """opensearch-py's JSON serializer on orjson: 384-float vectors make JSON the hot path."""
    import orjson
    from opensearchpy.serializer import JSONSerializer

    class OrjsonSerializer(JSONSerializer):
        def dumps(self, data: Any) -> Any:
            if isinstance(data, str | bytes):
                return data
            return orjson.dumps(data, default=self.default,
                                option=orjson.OPT_SERIALIZE_NUMPY).decode("utf-8")

        def loads(self, s: Any) -> Any:
            return orjson.loads(s)

    return OrjsonSerializer()


def _client_options(settings: Settings) -> JSON:
    options: JSON = {"request_timeout": 30}
    if settings.engine_ca_file:
        options["ca_certs"] = settings.engine_ca_file
    return options


def connect(settings: Settings, url: str | None = None) -> Engine:
    """Connect to the engine at ``url`` (default: settings), detecting which one it is."""
    from opensearchpy import OpenSearch

    url = url or settings.engine_url
    options = _client_options(settings)
    auth = (
        (settings.engine_username, settings.engine_password or "")
        if settings.engine_username
        else None
    )
    # opensearch-py sends no product or compatibility headers, so it can read any engine's `GET /`.
    probe = OpenSearch(hosts=[url], http_auth=auth, timeout=options["request_timeout"],
                       ca_certs=settings.engine_ca_file,
                       headers={"Authorization": f"ApiKey {settings.engine_api_key}"}
                       if settings.engine_api_key else None,
                       serializer=_opensearch_orjson())
    try:
        info = probe.info(request_timeout=settings.search_timeout_s)
    except Exception as exc:  # any transport error means the same thing here
        raise EngineError(f"cannot reach the engine at {url}: {exc}") from exc
    version = info.get("version", {})
    cluster_uuid = str(info.get("cluster_uuid") or "")
    if version.get("distribution") == "opensearch":
        return Engine(EngineKind.OPENSEARCH, probe, str(version.get("number")),
                      settings.search_timeout_s, cluster_uuid)
    probe.close()

    from elasticsearch import Elasticsearch
    from elasticsearch.serializer import OrjsonSerializer

    client = Elasticsearch(
        url,
        api_key=settings.engine_api_key,
        basic_auth=auth,
        serializer=OrjsonSerializer(),
        **options,
    )
    return Engine(EngineKind.ELASTICSEARCH, client, str(version.get("number")),
                  settings.search_timeout_s, cluster_uuid)
