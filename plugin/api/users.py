"""GET /users/<id>/interest (what the layer knows of a user) and DELETE /users/<id>."""

from __future__ import annotations

from typing import Any

import numpy as np
from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from plugin.api.auth import check_user, require
from plugin.api.context import services
from plugin.api.errors import ApiError
from plugin.interest import UserInterest, interest_vector
from plugin.pipeline import erase_user

bp = Blueprint("users", __name__)
NEAREST = 5
RECENT = 10


@bp.get("/users/<user_id>/interest")
@require("read")
def interest(user_id: str) -> ResponseReturnValue:
    check_user(user_id)
    svc = services()
    settings, engine = svc.settings, svc.engine
    found = engine.get_versioned(settings.interests_alias, user_id)
    if found is None:
        raise ApiError(404, "no interests for this user")
    source = found[0]
    user = UserInterest.from_source(source)
    horizons: dict[str, Any] = {}
    for name, state in (("long", user.long), ("short", user.short)):
        vector = interest_vector(state)
        entry: dict[str, Any] = {
            "present": vector is not None, "weight": round(state.weight, 6),
            "net": round(state.net, 6),
            "sum_norm": round(float(np.linalg.norm(state.vector_sum)), 6)}
        if vector is not None:
            body: dict[str, Any] = {"size": NEAREST, "_source": ["title", "tags"]}
            engine.add_knn(body, field_name="embedding", vector=vector.tolist(), k=NEAREST,
                           num_candidates=10 * NEAREST)
            hits = engine.search(settings.docs_alias, body)["hits"]["hits"]
            entry["nearest"] = [{"id": h["_id"], "title": h["_source"].get("title"),
                                 "score": h["_score"]} for h in hits]
        horizons[name] = entry
    recent = engine.search(settings.events_alias, {
        "size": RECENT, "sort": [{"timestamp": "desc"}], "query": {"term": {"user_id": user_id}},
        "_source": ["event_id", "type", "doc_id", "weight", "timestamp", "status"]})
    return jsonify({
        "user_id": user_id,
        "event_counts": source.get("event_counts", {}),
        "last_event_at": source.get("last_event_at"),
        "top_tags": source.get("top_tags", []),
        "horizons": horizons,
        "recent_events": [h["_source"] for h in recent["hits"]["hits"]],
    })


@bp.delete("/users/<user_id>")
@require("write")
def delete(user_id: str) -> ResponseReturnValue:
    check_user(user_id)
    return jsonify({"deleted": erase_user(services(), user_id)})
