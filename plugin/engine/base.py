"""What both engines share: the :class:`Engine` interface and its common calls, bulk outcomes,
errors and the per-request time budget. Each engine's differences live in its subclass."""

from __future__ import annotations

import contextlib
import enum
import importlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar, NamedTuple

import numpy as np
import numpy.typing as npt

JSON = dict[str, Any]
# HNSW candidates per wanted hit: at k the graph's top k is approximate, and which documents
# make it depends on the index's segments; at twice k it was the exact top k on the
# evaluation's catalogue, at no measurable cost (docs/benchmarks.md, "kNN candidates").
KNN_CANDIDATES_PER_HIT = 2
MAX_KNN_CANDIDATES = 10_000  # Elasticsearch's limit


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


def cosine_knn_score(cosine: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The score a kNN search gives a document at this cosine to the query vector: both
    engines' cosine fields score as Lucene does, (1 + cosine) / 2."""
    return (1.0 + np.asarray(cosine, dtype=np.float64)) / 2.0


def knn_candidates(k: int) -> int:
    """The HNSW search width for ``k`` hits (KNN_CANDIDATES_PER_HIT)."""
    return min(MAX_KNN_CANDIDATES, KNN_CANDIDATES_PER_HIT * k)


@dataclass
class Engine(ABC):
    """One engine: its client, and every request shape or call the product needs of it."""

    kind: ClassVar[EngineKind]
    # The client's package (elasticsearch-py or opensearch-py): its helpers and errors.
    client_library: ClassVar[str]
    # Whether eland (Elasticsearch's DataFrame reader) can read it.
    eland_readable: ClassVar[bool] = False
    # Headers a client of this engine expects on a relayed response (the `_search` proxy).
    response_headers: ClassVar[dict[str, str]] = {}

    client: Any  # elasticsearch.Elasticsearch or opensearchpy.OpenSearch
    version: str
    # Searches answer people: past this they fail (and the API says 503) rather than hang.
    search_timeout_s: float = 30.0
    # The cluster's identity (`GET /`): which deployment a Redis namespace belongs to.
    cluster_uuid: str = ""
    _capabilities: dict[str, bool] = field(default_factory=dict, repr=False)
    # Clients bound to a request timeout, by timeout step (where binding one builds a client).
    _timeout_clients: dict[int, Any] = field(default_factory=dict, repr=False)

    @property
    def version_tuple(self) -> tuple[int, int]:
        """(major, minor) of the server, e.g. (9, 5)."""
        major, _, rest = self.version.partition(".")
        minor = rest.split(".", 1)[0]
        return int(major), int(minor) if minor.isdigit() else 0

    # -- mappings ---------------------------------------------------------------------------

    @abstractmethod
    def index_settings(self, knn: bool = True) -> JSON:
        """Settings of an index whose vector fields are searched by kNN (``knn``) or not."""

    @abstractmethod
    def vector_field(self, dims: int, *, m: int = 16, ef_construction: int = 100,
                     quantized: bool = False, indexed: bool = True) -> JSON:
        """A cosine-similarity HNSW vector field of ``dims`` dimensions.

        ``indexed=False``: stored for scripts and readers, with no graph to build on writes
        (user vectors are read by id, never searched by kNN).
        """

    # -- queries ----------------------------------------------------------------------------

    @abstractmethod
    def add_knn(self, body: JSON, *, field_name: str, vector: Iterable[float], k: int,
                num_candidates: int | None = None, boost: float = 1.0,
                filter_query: JSON | None = None) -> None:
        """Add one kNN clause whose score (``(1 + cos) / 2``) is summed with the query's
        (``num_candidates``: the graph's search width, by default ``knn_candidates(k)``)."""

    @abstractmethod
    def knn_query(self, field_name: str, vector: Iterable[float], k: int,
                  filter_query: JSON | None = None, boost: float = 1.0) -> JSON:
        """A kNN *query* clause (usable inside bool): OpenSearch, or Elasticsearch 8.12+."""

    def knn_retriever(self, field_name: str, vector: Iterable[float], k: int,
                      filter_query: JSON | None = None) -> JSON:
        """A ``knn`` retriever, for use inside a ``linear`` retriever (where there is one)."""
        raise EngineError(f"{self.kind.value} has no retrievers")

    def blend_script(self, field_name: str) -> str:
        """The blend's Painless source: a constant per engine and field, never request data.

        Params: a, c, d (weights), max_bm25, ul, us (the user's long and short vectors). It
        scores the query's matches only: personalization re-orders what the query found.
        """
        def sim(param: str) -> str:
            return f"(1.0 + {self.painless_cosine(param, field_name)}) / 2.0"

        return (
            "double s = params.a * Math.min(1.0, _score / params.max_bm25);"
            f" if (params.c > 0) {{ s += params.c * {sim('ul')}; }}"
            f" if (params.d > 0) {{ s += params.d * {sim('us')}; }}"
            " return s;"
        )

    @abstractmethod
    def painless_cosine(self, vector_param: str, field_name: str) -> str:
        """Painless expression for the cosine similarity (in [-1, 1]) of a param and a field."""

    # -- capabilities -----------------------------------------------------------------------

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
        """Whether the server takes a ``linear`` retriever (Elasticsearch 8.18+)."""
        return False

    # -- calls ------------------------------------------------------------------------------

    @abstractmethod
    def _with_timeout(self, timeout_s: float) -> tuple[Any, JSON]:
        """The client to call within ``timeout_s``, and the parameters that say so."""

    @property
    def _helpers(self) -> ModuleType:
        """The client's own ``helpers`` module (``streaming_bulk``, ``scan``)."""
        return importlib.import_module(f"{self.client_library}.helpers")

    @property
    def _not_found_error(self) -> type[Exception]:
        """The client's exception for a document or index that is not there."""
        error: type[Exception] = importlib.import_module(self.client_library).NotFoundError
        return error

    @abstractmethod
    def api_error(self, exc: Exception) -> tuple[int, Any] | None:
        """(HTTP status, body) when ``exc`` is the engine refusing a request, else None."""

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
        client, extra = self._with_timeout(timeout_s)
        return getattr(client, method)(**extra, **params)

    def ping(self) -> bool:
        return bool(self.client.ping())

    def search(self, index: str, body: Mapping[str, Any], **params: Any) -> JSON:
        """One search within ``search_timeout_s`` (a stalled engine raises a timeout)."""
        return dict(self._call("search", self.search_timeout_s, index=index, body=dict(body),
                               **params))

    def msearch(self, index: str, bodies: Sequence[Mapping[str, Any]],
                header: Mapping[str, Any] | None = None, **params: Any) -> list[JSON]:
        """Several searches in one request (the engine runs them side by side), within
        ``search_timeout_s``; ``header``: each search's header line (e.g. a ``preference``).
        A search the engine refused comes back as its error body (``error`` and ``status``),
        as the engine answers it."""
        lines: list[Mapping[str, Any]] = []
        for body in bodies:
            lines += [dict(header or {}), dict(body)]
        found = self._call("msearch", self.search_timeout_s, index=index, body=lines, **params)
        return [dict(r) for r in found["responses"]]

    def count(self, index: str, query: JSON | None = None) -> int:
        body = None if query is None else {"query": query}
        return int(self.client.count(index=index, body=body)["count"])

    def refresh(self, index: str) -> None:
        """Make what was written to ``index`` visible to searches."""
        self.client.indices.refresh(index=index)

    def force_merge(self, index: str) -> None:
        """Merge ``index`` into one segment (every vector field gets one graph). Rewritten
        documents' old copies may stay as soft deletes the engine retains for recovery."""
        client, extra = self._with_timeout(600.0)
        client.indices.forcemerge(index=index, max_num_segments=1, **extra)

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

    def mget_versioned(self, index: str, ids: list[str]) -> dict[str, tuple[JSON, int, int]]:
        """Real-time multi-get: found documents (whole sources) with their ``_seq_no`` and
        ``_primary_term``."""
        return {doc["_id"]: (doc["_source"], int(doc["_seq_no"]), int(doc["_primary_term"]))
                for doc in self._mget(index, ids)}

    def mget_sources(self, index: str, ids: Iterable[str],
                     fields: list[str] | None = None) -> dict[str, JSON]:
        """Real-time multi-get: the found documents' sources, whole or only ``fields``. (Ask
        for fields only where the vectors are not wanted: picking fields out of a source
        makes the engine parse its vectors' floats and write them again.)"""
        params: JSON = {} if fields is None else {"_source_includes": fields}
        return {doc["_id"]: doc.get("_source") or {}
                for doc in self._mget(index, list(ids), **params)}

    def _mget(self, index: str, ids: list[str], **params: Any) -> Iterator[JSON]:
        """The found documents of ``ids``, a thousand per request."""
        for start in range(0, len(ids), 1000):
            response = self._call("mget", index=index, body={"ids": ids[start:start + 1000]},
                                  **params)
            yield from (doc for doc in response["docs"] if doc.get("found"))

    def delete(self, index: str, doc_id: str, refresh: bool = False) -> bool:
        """Delete one document; False if it was not there."""
        try:
            self.client.delete(index=index, id=doc_id, refresh=refresh)
        except self._not_found_error:
            return False
        return True

    def delete_indices(self, pattern: str) -> None:
        """Delete every index matching ``pattern`` (an evaluation's or benchmark's own)."""
        self.client.indices.delete(index=pattern)

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
        for ok, item in self._helpers.streaming_bulk(
                self.client, actions, chunk_size=chunk_size, raise_on_error=False,
                raise_on_exception=False, max_retries=3, initial_backoff=0.5, **extra):
            outcome.add(ok, item)
            if progress:
                progress(1)
        return outcome

    def scan(self, index: str, query: JSON, **kwargs: Any) -> Iterable[JSON]:
        """Every hit of ``query``, through the client's ``helpers.scan`` (scroll)."""
        result: Iterable[JSON] = self._helpers.scan(self.client, query=query, index=index,
                                                    **kwargs)
        return result

    def close(self) -> None:
        self.client.close()
