"""POST /<index>/_search: an Elasticsearch-compatible search endpoint that personalizes.

Any Elasticsearch (or OpenSearch) client pointed at the layer sends its usual body plus an
``X-User-Id`` header. For a user with interest vectors the body's query is kept as the text
clause (normalized by its best score) and weighted kNN clauses for the user's vectors (and the
query text's, when the body has one) are added, each filtered by the original query, so the
result set stays the one the query asked for and only the order changes. Without a user, or
for a user with no vector, the body goes to the engine unchanged. The engine's response comes
back as it is.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from plugin import search as search_service
from plugin.api.auth import require, user_allowed
from plugin.api.context import services
from plugin.api.json_body import UnreadableJson, request_json
from plugin.api.metrics import PERSONALIZED
from plugin.api.proxy_policy import RefusedBody, check_body
from plugin.engine import JSON
from plugin.strategies import STRATEGIES, QueryContext

bp = Blueprint("proxy", __name__)

TEXT_QUERIES = ("match", "match_phrase", "multi_match", "query_string", "simple_query_string")
# ``preference`` routes a client's searches to the same shard copies (the same BM25
# statistics), so two searches, or a search and the places ``keep`` takes, rank alike.
PASSED_PARAMS = ("size", "from", "track_total_hits", "typed_keys", "preference")


def _es_error(status: int, kind: str, reason: str) -> ResponseReturnValue:
    return jsonify({"error": {"type": kind, "reason": reason,
                              "root_cause": [{"type": kind, "reason": reason}]},
                    "status": status}), status


def _query_text(node: Any) -> str | None:
    """The words of the first full-text clause, to embed as the query vector."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in TEXT_QUERIES and isinstance(value, dict):
                if isinstance(value.get("query"), str):
                    return str(value["query"])
                for inner in value.values():
                    if isinstance(inner, dict) and isinstance(inner.get("query"), str):
                        return str(inner["query"])
                    if isinstance(inner, str):
                        return inner
            found = _query_text(value)
            if found:
                return found
    elif isinstance(node, list):
        for value in node:
            found = _query_text(value)
            if found:
                return found
    return None


@bp.route("/<index>/_search", methods=["GET", "POST"])
@require("read")
def proxy_search(index: str) -> ResponseReturnValue:
    svc = services()
    settings = svc.settings
    if index not in {settings.docs_alias, *settings.proxy_indices}:
        return _es_error(404, "index_not_found_exception",
                         "this layer serves searches on its configured indices only")
    try:
        body = request_json(force=True) if request.data else {}
    except UnreadableJson as exc:
        return _es_error(400, "parse_exception", str(exc))
    if not isinstance(body, dict):
        return _es_error(400, "parse_exception", "the request body must be a JSON object")
    try:
        check_body(body, settings.max_window)
    except RefusedBody as exc:
        return _es_error(400, "illegal_argument_exception", str(exc))
    params: dict[str, str] = {k: str(request.args[k]) for k in PASSED_PARAMS
                              if k in request.args}
    try:
        size_raw: Any = params["size"] if "size" in params else body.get("size", 10)
        from_raw: Any = params["from"] if "from" in params else body.get("from", 0)
        size, offset = int(size_raw), int(from_raw)
    except (TypeError, ValueError, OverflowError):
        return _es_error(400, "illegal_argument_exception", "'size' and 'from' must be integers")
    if not 0 <= size <= settings.max_size or offset < 0 or offset + size > settings.max_window:
        return _es_error(400, "illegal_argument_exception",
                         f"'size' must be 0..{settings.max_size} and 'from' + 'size' at most "
                         f"{settings.max_window}")

    user_id = request.headers.get("X-User-Id")
    if user_id and not user_allowed(user_id):
        return _es_error(403, "security_exception",
                         "this API key may not personalize for that X-User-Id")
    personalized, reason = False, "no X-User-Id"
    plain: JSON | None = None  # the search without the user, where seen documents keep places
    seen: tuple[str, ...] = ()
    if user_id and ("sort" in body or "knn" in body):
        reason = "the body sorts or has its own kNN: passed through"
    elif user_id:
        try:
            user = search_service.user_vectors(svc, user_id)
            if user.empty:
                reason = "user has no interest vector yet"
            else:
                body, plain = _rewrite(body, user, size + offset)
                seen = user.seen
                personalized, reason = True, ""
        except Exception as exc:  # a personalization fault never fails the search
            reason = f"user vectors unavailable ({type(exc).__name__})"
    PERSONALIZED.labels("yes" if personalized else "no").inc()
    try:
        if plain is None:
            response = svc.engine.search(index, body, **params)
        else:
            response = _keeping_places(index, body, plain, seen, size, offset, params)
    except Exception as exc:
        refused = svc.engine.api_error(exc)
        if refused is None or svc.engine.is_busy(exc) or refused[0] >= 500:
            raise  # down, stalled or overloaded: errors.py answers 503 with Retry-After
        status, error_body = refused  # the engine's own 4xx, relayed as it is
        return jsonify(error_body), status
    if "error" in response:  # refused within the multi-search: relayed as it is
        return jsonify({"error": response["error"], "status": response.get("status", 400)}), \
            int(response.get("status", 400))
    out = jsonify(response)
    out.headers.update(svc.engine.response_headers)
    out.headers["X-Es-Interest-Personalized"] = "true" if personalized else "false"
    if reason:
        out.headers["X-Es-Interest-Reason"] = reason
    return out


def _keeping_places(index: str, body: JSON, plain: JSON, seen: tuple[str, ...], size: int,
                    offset: int, params: dict[str, str]) -> JSON:
    """The blend and the client's own body in one multi-search, each over the whole window;
    the user's seen documents take their places from the second (``keep``; ``floor``: those
    places or better)."""
    window = size + offset
    bodies = []
    for search_body in (body, plain):
        whole = {**search_body, "size": window, "from": 0}
        if "track_total_hits" in params:
            whole["track_total_hits"] = params["track_total_hits"]
        bodies.append(whole)
    extra = {k: v for k, v in params.items() if k == "typed_keys"}
    # A multi-search takes the routing preference per search, in its header line.
    header = {"preference": params["preference"]} if "preference" in params else None
    response, without_user = services().engine.msearch(index, bodies, header=header, **extra)
    if "error" in response or "error" in without_user:
        return response if "error" in response else without_user
    response["hits"]["hits"] = search_service.seen_places(
        services().settings, response["hits"]["hits"], without_user["hits"]["hits"],
        set(seen), window)[offset:]
    response.pop("status", None)  # a multi-search's own field: not in a search's answer
    return response


def _rewrite(body: JSON, user: search_service.UserVectors, window: int
             ) -> tuple[JSON, JSON | None]:
    """The client's query as the knn_linear blend (plugin/strategies.py) with its shipped
    weights: the query is the words' clause, normalized by its best score, and it also bounds
    every vector term, so the result set stays the one it asked for. With seen_policy
    ``keep`` or ``floor``, also the client's own body, whose places the seen documents take
    (``floor``: or better)."""
    svc = services()
    engine = svc.engine
    if user.behaviour_version != search_service.behaviour_version(svc):
        user = user.without_behaviour()
    if user.content_version != svc.content_model().version:
        user = user.without_content()
    weights = search_service.configured_weights(svc, "knn_linear", user).behaviour_scaled(
        search_service.behaviour_support(svc))
    original = body.get("query", {"match_all": {}})
    best = engine.search(svc.settings.docs_alias, {"size": 1, "_source": False,
                                                   "track_total_hits": False, "query": original})
    vector: list[float] = []
    text = _query_text(original)
    if text:
        inputs = search_service.query_inputs(svc, text, {})
        vector = inputs.vector
        weights = weights.personal_scaled(inputs.personal_scale(weights.ambiguity))
    else:  # no words to embed: no query-vector term
        weights = replace(weights, query=0.0)
    k = max(window, svc.settings.personal_candidates)
    weights, keep = search_service.places_kept(svc, user, weights)
    blend = STRATEGIES["knn_linear"].request(QueryContext(
        engine, words=original, matching=original, scope=original, filters=[],
        weights=weights, vector=vector, max_bm25=float(best["hits"].get("max_score") or 0.0),
        user=user, size=window, offset=0, personal_k=k,
        seen=search_service.held_neutral(svc, user)))
    rewritten = copy.deepcopy(body)
    rewritten["query"] = blend["query"]
    if "knn" in blend:
        rewritten["knn"] = blend["knn"]
    # Without the header the client gets its own body as it is: the places seen documents keep.
    return rewritten, copy.deepcopy(body) if keep else None


