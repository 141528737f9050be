"""GET/POST /search: an ordinary query, personalized when a user id comes with it."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from plugin import search as search_service
from plugin.api.auth import check_user, require
from plugin.api.context import services
from plugin.api.errors import ApiError
from plugin.api.json_body import request_json
from plugin.api.metrics import PERSONALIZED
from plugin.api.schemas import SearchRequest

bp = Blueprint("search", __name__)


def _from_query_string() -> dict[str, Any]:
    args = request.args
    data: dict[str, Any] = {k: v for k, v in args.items()
                            if k in ("q", "user_id", "size", "from", "strategy")}
    for flag in ("explain", "cache"):
        if flag in args:
            data[flag] = args[flag].lower() in ("1", "true", "yes")
    weights = {k[len("w_"):]: v for k, v in args.items() if k.startswith("w_")}
    if weights:
        data["weights"] = weights
    filters: dict[str, list[str]] = {}
    for item in args.getlist("filter"):
        name, _, value = item.partition(":")
        filters.setdefault(name, []).append(value)
    if filters:
        data["filters"] = filters
    return data


@bp.route("/search", methods=["GET", "POST"])
@require("read")
def search() -> ResponseReturnValue:
    raw = request_json() if request.method == "POST" else _from_query_string()
    if not isinstance(raw, dict):
        raise ApiError(400, "the body must be a JSON object")
    req = SearchRequest.model_validate(raw)
    if req.user_id is not None:
        check_user(req.user_id)
    svc = services()
    if req.from_ + req.size > svc.settings.max_window:
        raise ApiError(400, f"'from' + 'size' must be at most {svc.settings.max_window}")
    overrides = {k: v for k, v in req.weights.model_dump().items() if v is not None}
    params = search_service.SearchParams(
        req.q, user_id=req.user_id, size=req.size, offset=req.from_, filters=req.filters,
        strategy=req.strategy, explain=req.explain, use_cache=req.cache)
    params = search_service.with_weights(params, **overrides)
    try:
        result = search_service.search(svc, params)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    except Exception as exc:
        refused = svc.engine.api_error(exc)
        if refused is None or refused[0] >= 500 or svc.engine.is_busy(exc):
            raise  # a 503 with Retry-After (errors.py)
        raise ApiError(400, "the engine refused the rewritten query", engine=refused[1]) from None
    PERSONALIZED.labels("yes" if result.personalized else "no").inc()
    return jsonify({
        "hits": result.hits,
        "total": result.total,
        "personalized": result.personalized,
        "reason": result.reason,
        "strategy": result.strategy,
        "took_ms": round(result.took_ms, 2),
    })
