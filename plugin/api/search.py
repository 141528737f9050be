"""GET/POST /search: an ordinary query, personalized when a user id comes with it."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from plugin import search as search_service
from plugin.api.context import services

bp = Blueprint("search", __name__)

MAX_SIZE = 100


@bp.route("/search", methods=["GET", "POST"])
def search() -> ResponseReturnValue:
    params = (request.get_json(silent=True) or {}) if request.method == "POST" else request.args
    query = str(params.get("q") or "").strip()
    if not query:
        return jsonify({"error": "missing 'q'"}), 400
    try:
        size = int(params.get("size", 10))
    except (TypeError, ValueError):
        return jsonify({"error": "'size' must be an integer"}), 400
    if not 1 <= size <= MAX_SIZE:
        return jsonify({"error": f"'size' must be between 1 and {MAX_SIZE}"}), 400
    user_id = params.get("user_id") or None
    result = search_service.search(services(), query, user_id=user_id, size=size)
    return jsonify({
        "hits": result.hits,
        "personalized": result.personalized,
        "reason": result.reason,
        "took_ms": round(result.took_ms, 2),
    })
