"""GET /users/<id>/interest (what the layer knows of a user) and DELETE /users/<id>."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from plugin.api.auth import check_user, require
from plugin.api.context import services
from plugin.api.errors import ApiError
from plugin.pipeline import erase_user
from plugin.profile import describe_user

bp = Blueprint("users", __name__)


@bp.get("/users/<user_id>/interest")
@require("read")
def interest(user_id: str) -> ResponseReturnValue:
    check_user(user_id)
    described = describe_user(services(), user_id)
    if described is None:
        raise ApiError(404, "no interests for this user")
    return jsonify(described)


@bp.delete("/users/<user_id>")
@require("write")
def delete(user_id: str) -> ResponseReturnValue:
    check_user(user_id)
    return jsonify({"deleted": erase_user(services(), user_id)})
