"""GET /users/<id>/interest (what the layer knows of a user) and DELETE /users/<id>; ids
may hold ``/`` (as events accept them), sent as they are or as ``%2F``."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from plugin.api.auth import check_user, require
from plugin.api.context import services
from plugin.api.errors import ApiError
from plugin.pipeline import erase_user
from plugin.profile import describe_user

bp = Blueprint("users", __name__)


@bp.get("/users/<path:user_id>/interest")
@require("read")
def interest(user_id: str) -> ResponseReturnValue:
    check_user(user_id)
    described = describe_user(services(), user_id)
    if described is None:
        raise ApiError(404, "no interests for this user")
    return jsonify(described)


@bp.delete("/users/<path:user_id>")
@require("write")
def delete(user_id: str) -> ResponseReturnValue:
    """Erase now, and once more after the visibility timeout: a batch that was in flight
    during this erase is finished (or handed to another worker) by then (erase_user)."""
    check_user(user_id)
    svc = services()
    deleted = erase_user(svc, user_id)
    svc.celery.send_task("es_interest.erase_user", args=[user_id, deleted["erased_at_ms"]],
                         countdown=svc.settings.task_visibility_s)
    return jsonify({"deleted": deleted})
