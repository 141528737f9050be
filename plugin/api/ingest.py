"""POST /documents and POST /events: validate now, queue for the workers, answer 202."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from plugin import documents as document_fields
from plugin import events as event_fields
from plugin.api.auth import require, user_allowed
from plugin.api.context import services
from plugin.api.errors import ApiError
from plugin.api.json_body import request_json
from plugin.api.schemas import DocumentsRequest, EventsRequest
from plugin.celery_app import send_documents, send_events
from plugin.documents import InvalidDocument, parse_document
from plugin.events import InvalidEvent, parse_event

bp = Blueprint("ingest", __name__)
TASK_BATCH = 500


def _body(key: str) -> dict[str, Any]:
    raw = request_json()
    if isinstance(raw, list):
        raw = {key: raw}
    if not isinstance(raw, dict):
        raise ApiError(400, f"send a JSON list, or an object with a '{key}' list")
    return raw


def _queue(send: Callable[..., list[tuple[int, Any]]], items: Sequence[Any],
           check: Callable[[Any], object], invalid: type[Exception], id_key: str,
           keep: Callable[[Any], dict[str, Any]],
           options: dict[str, Any] | None = None) -> ResponseReturnValue:
    errors: list[dict[str, Any]] = []
    valid: list[dict[str, Any]] = []
    for position, item in enumerate(items):
        try:
            check(item)
        except invalid as exc:
            item_id = item.get(id_key) if isinstance(item, dict) else None
            errors.append({"position": position, "id": item_id, "error": str(exc)})
        else:
            valid.append(keep(item))
    task_ids = [result.id for _, result in send(services().celery, valid, TASK_BATCH, options)]
    return jsonify({"accepted": len(valid), "task_ids": task_ids, "errors": errors}), 202


@bp.post("/documents")
@require("write")
def documents() -> ResponseReturnValue:
    req = DocumentsRequest.model_validate(_body("documents"))
    return _queue(send_documents, req.documents, parse_document,
                  InvalidDocument, "id", document_fields.known_fields)


@bp.post("/events")
@require("write")
def events() -> ResponseReturnValue:
    req = EventsRequest.model_validate(_body("events"))
    weights = services().settings.event_weights

    def check(raw: Any) -> object:
        event = parse_event(raw, weights)
        if not user_allowed(event.user_id):
            raise InvalidEvent("'user_id' is outside the users this API key serves")
        return event

    # When the layer accepted them: the events keep it, to measure the interest-update lag.
    return _queue(send_events, req.events, check, InvalidEvent, "event_id",
                  event_fields.known_fields, {"accepted_at_ms": int(time.time() * 1000)})
