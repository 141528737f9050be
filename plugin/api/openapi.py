"""GET /openapi.json: the API described in OpenAPI 3.1, request schemas from the models."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from plugin import __version__
from plugin.api.schemas import DocumentsRequest, EventsRequest, SearchRequest

bp = Blueprint("openapi", __name__)


def _op(summary: str, scope: str | None, body: type | None = None,
        responses: dict[str, str] | None = None, params: list[dict[str, Any]] | None = None
        ) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {
        code: {"description": text} for code, text in (responses or {"200": "OK"}).items()}}
    if scope:
        op["security"] = [{"apiKey": []}]
        op["description"] = f"Needs an API key with the '{scope}' scope."
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": body.model_json_schema(by_alias=True)}}}  # type: ignore[attr-defined]
    if params:
        op["parameters"] = params
    return op


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def spec() -> dict[str, Any]:
    bad = {"400": "invalid request, with the reason", "401": "no or unknown API key",
           "403": "missing scope", "429": "rate limit"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "es-interest", "version": __version__,
                 "description": "Personalized search from dynamic user-interest embeddings."},
        "components": {"securitySchemes": {"apiKey": {
            "type": "apiKey", "in": "header", "name": "Authorization",
            "description": "`ApiKey <key>` (or the X-Api-Key header)"}}},
        "paths": {
            "/search": {
                "post": _op("Search, personalized for user_id", "read", SearchRequest,
                            {"200": "hits (each score component with explain)", **bad}),
                "get": _op("Search (query-string form: q, user_id, size, from, strategy, "
                           "explain, cache, w_<weight>, filter=field:value)", "read",
                           responses={"200": "hits (each score component with explain)", **bad}),
            },
            "/{index}/_search": {"post": _op(
                "Elasticsearch-compatible search; personalized with the X-User-Id header",
                "read", responses={"200": "the engine's response", **bad,
                                   "404": "not a configured index"},
                params=[_path_param("index"), {"name": "X-User-Id", "in": "header",
                                               "schema": {"type": "string"}}])},
            "/documents": {"post": _op("Queue documents for embedding and indexing", "write",
                                       DocumentsRequest, {"202": "accepted", **bad})},
            "/events": {"post": _op("Queue user events", "write", EventsRequest,
                                    {"202": "accepted", **bad})},
            "/users/{user_id}/interest": {"get": _op(
                "A user's interest vectors, nearest documents and recent events", "read",
                responses={"200": "OK", "404": "no interests", **bad},
                params=[_path_param("user_id")])},
            "/users/{user_id}": {"delete": _op(
                "Erase a user's interests and events", "write", params=[_path_param("user_id")])},
            "/health": {"get": _op("Engine, Redis, workers and model status", None,
                                   responses={"200": "all up", "503": "something is down"})},
            "/metrics": {"get": _op("Prometheus metrics", None)},
            "/openapi.json": {"get": _op("This description", None)},
        },
    }


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    return jsonify(spec())
