"""What a body sent to the ``_search`` proxy may contain: an allow-list, not a deny-list.

Every top-level key, query clause and aggregation must be one this module knows to stay within
the served index: no clause that names another index (terms lookup, ``more_like_this`` docs,
``percolate``, ``pinned``, …), no scripts, and sizes within the layer's limits. Anything else is
refused with a reason that names the first offending path.

Two passes: a generic walk of the whole body first (bounded depth, and no object anywhere that
names an index or a document of one, whatever clause holds it: a clause this module has never
heard of cannot reach another index either), then the allow-list of clauses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from plugin.engine.base import MAX_KNN_CANDIDATES

# Leaf queries whose parameters hold field names and values only.
LEAF_QUERIES = frozenset({
    "match", "match_phrase", "match_phrase_prefix", "match_bool_prefix", "multi_match",
    "query_string", "simple_query_string", "combined_fields", "term", "range", "exists",
    "prefix", "wildcard", "fuzzy", "ids", "match_all", "match_none",
})
# Compound queries: which of their keys hold further queries (a clause or a list of them).
COMPOUND_QUERIES: dict[str, tuple[str, ...]] = {
    "bool": ("must", "should", "filter", "must_not"),
    "constant_score": ("filter",),
    "dis_max": ("queries",),
    "boosting": ("positive", "negative"),
}
# Aggregations that read the served index only; sized ones are capped.
AGGREGATIONS = frozenset({
    "terms", "histogram", "date_histogram", "range", "date_range", "filter", "filters",
    "avg", "min", "max", "sum", "value_count", "cardinality", "stats", "extended_stats",
    "percentiles", "missing", "significant_terms", "top_hits",
})
SIZED_AGGREGATION_KEYS = ("size", "shard_size")
TOP_LEVEL = frozenset({
    "query", "size", "from", "_source", "sort", "track_total_hits", "aggs", "aggregations",
    "post_filter", "min_score", "knn", "timeout", "terminate_after", "explain", "version",
    "seq_no_primary_term", "track_scores", "stored_fields", "docvalue_fields", "fields",
})
MAX_BUCKETS = 1000
MAX_DEPTH = 20
# Keys by which a clause reads another index or a stored document (terms lookup, a
# ``background_filter``'s lookup, ``more_like_this`` docs, ``geo_shape``'s indexed shape,
# ``percolate``, ``pinned``): refused wherever they stand.
INDEX_KEYS = frozenset({"index", "_index", "indices"})
# Keys that make the engine run code or reach beyond a plain search, wherever they stand.
CODE_KEYS = frozenset({"script", "script_score", "script_fields", "runtime_mappings",
                       "scripted_metric", "stored_scripts", "pit", "suggest"})
# Nesting of the whole body (objects and lists) a legitimate search stays well within.
MAX_BODY_DEPTH = 64
# Aggregation parameters that hold a query, besides ``filter`` and ``filters`` themselves.
AGGREGATION_QUERIES: dict[str, tuple[str, ...]] = {
    "significant_terms": ("background_filter",),
}


class RefusedBody(ValueError):
    """The body asks for something the proxy does not serve; the message says what."""


def check_body(body: Mapping[str, Any], max_window: int) -> None:
    """Raise :class:`RefusedBody` unless every part of ``body`` is allowed."""
    _check_nothing_names_an_index(body)
    for key, value in body.items():
        if key not in TOP_LEVEL:
            raise RefusedBody(f"'{key}' is not served by this proxy "
                              f"(allowed: {', '.join(sorted(TOP_LEVEL))})")
        if key in ("query", "post_filter"):
            _check_query(value, key, 0)
        elif key in ("aggs", "aggregations"):
            _check_aggregations(value, key, 0)
        elif key == "knn":
            for i, clause in enumerate(value if isinstance(value, list) else [value]):
                _check_knn(clause, f"knn[{i}]", max_window)
        elif key in ("size", "from", "terminate_after"):
            _whole_number(value, key)


def _check_nothing_names_an_index(body: Any) -> None:
    """Walk every object and list of ``body`` (without recursion, so any depth is safe)."""
    code: set[str] = set()
    stack: list[tuple[Any, str, int]] = [(body, "body", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_BODY_DEPTH:
            raise RefusedBody(f"'{path}' nests deeper than {MAX_BODY_DEPTH} levels")
        if isinstance(node, str):
            _unicode(node, path)
        elif isinstance(node, Mapping):
            for key, value in node.items():
                _unicode(str(key), path)
                if key in INDEX_KEYS:
                    raise RefusedBody(f"'{path}.{key}': a clause that reads another index or "
                                      "a stored document is refused here")
                if key in CODE_KEYS:
                    code.add(key)
                stack.append((value, f"{path}.{key}", depth + 1))
        elif isinstance(node, list):
            stack.extend((value, f"{path}[{i}]", depth + 1) for i, value in enumerate(node))
    if code:
        raise RefusedBody(f"scripts and code are refused here: {sorted(code)}")


def _unicode(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RefusedBody(f"'{path}' holds a lone surrogate, which is not Unicode text") from None


def _whole_number(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RefusedBody(f"'{path}' must be a whole number")
    try:
        number = float(value)
    except ValueError:
        raise RefusedBody(f"'{path}' must be a whole number") from None
    if not math.isfinite(number) or number != int(number):
        raise RefusedBody(f"'{path}' must be a finite whole number")
    return int(number)


def _object(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RefusedBody(f"'{path}' must be an object")
    return value


def _check_query(node: Any, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise RefusedBody(f"'{path}' nests deeper than {MAX_DEPTH} levels")
    clause = _object(node, path)
    if len(clause) != 1:
        raise RefusedBody(f"'{path}' must hold exactly one query, got {sorted(clause)}")
    (kind, params), = clause.items()
    where = f"{path}.{kind}"
    if kind in LEAF_QUERIES:
        return
    if kind == "terms":
        for field, values in _object(params, where).items():
            if field not in ("boost", "_name") and not isinstance(values, list):
                # An object here is a terms lookup: it reads a document of another index.
                raise RefusedBody(f"'{where}.{field}' must be a list of values "
                                  "(terms lookup reads other indices and is refused)")
        return
    if kind in COMPOUND_QUERIES:
        body = _object(params, where)
        for key in COMPOUND_QUERIES[kind]:
            if key in body:
                inner = body[key]
                for i, sub in enumerate(inner if isinstance(inner, list) else [inner]):
                    _check_query(sub, f"{where}.{key}[{i}]", depth + 1)
        return
    allowed = ", ".join(sorted([*LEAF_QUERIES, "terms", *COMPOUND_QUERIES]))
    raise RefusedBody(f"query type '{kind}' at '{path}' is not served by this proxy "
                      f"(allowed: {allowed})")


def _check_aggregations(node: Any, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise RefusedBody(f"'{path}' nests deeper than {MAX_DEPTH} levels")
    for name, agg in _object(node, path).items():
        where = f"{path}.{name}"
        for kind, params in _object(agg, where).items():
            if kind in ("aggs", "aggregations"):
                _check_aggregations(params, f"{where}.{kind}", depth + 1)
                continue
            if kind == "meta":
                continue
            if kind not in AGGREGATIONS:
                raise RefusedBody(f"aggregation '{kind}' at '{where}' is not served by this "
                                  f"proxy (allowed: {', '.join(sorted(AGGREGATIONS))})")
            params = _object(params, f"{where}.{kind}")
            if "script" in params:
                raise RefusedBody(f"'{where}.{kind}.script': scripts are refused here")
            for key in SIZED_AGGREGATION_KEYS:
                if key in params and _whole_number(params[key], f"{where}.{kind}.{key}") \
                        > MAX_BUCKETS:
                    raise RefusedBody(f"'{where}.{kind}.{key}' is over {MAX_BUCKETS}")
            for key in AGGREGATION_QUERIES.get(kind, ()):
                if key in params:
                    _check_query(params[key], f"{where}.{kind}.{key}", depth + 1)
            if kind == "filter":
                _check_query(params, f"{where}.filter", depth + 1)
            elif kind == "filters":
                filters = params.get("filters", {})
                queries = (list(filters.values()) if isinstance(filters, Mapping)
                           else list(filters))
                for i, query in enumerate(queries):
                    _check_query(query, f"{where}.filters[{i}]", depth + 1)


def _check_knn(node: Any, path: str, max_window: int) -> None:
    clause = _object(node, path)
    allowed = {"field", "query_vector", "k", "num_candidates", "filter", "boost",
               "similarity", "_name"}
    unknown = sorted(set(clause) - allowed)
    if unknown:
        raise RefusedBody(f"'{path}' has keys this proxy does not serve: {unknown} "
                          "(query_vector_builder and inner_hits are refused)")
    if "k" in clause and _whole_number(clause["k"], f"{path}.k") > max_window:
        raise RefusedBody(f"'{path}.k' is over {max_window}")
    if "num_candidates" in clause and _whole_number(
            clause["num_candidates"], f"{path}.num_candidates") > MAX_KNN_CANDIDATES:
        raise RefusedBody(f"'{path}.num_candidates' is over {MAX_KNN_CANDIDATES}")
    if "filter" in clause:
        filters = clause["filter"]
        for i, query in enumerate(filters if isinstance(filters, list) else [filters]):
            _check_query(query, f"{path}.filter[{i}]", 1)
