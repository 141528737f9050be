"""Errors as JSON: every 4xx says what was wrong, and nothing the user sent is logged."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> ResponseReturnValue:
        return jsonify({"error": exc.message, **exc.extra}), exc.status

    @app.errorhandler(ValidationError)
    def invalid(exc: ValidationError) -> ResponseReturnValue:
        return jsonify({"error": _validation_message(exc)}), 400

    @app.errorhandler(Exception)
    def engine_trouble(exc: Exception) -> ResponseReturnValue:
        from plugin.api.context import services

        refused = services().engine.api_error(exc)
        if refused is not None:
            status = 503 if refused[0] >= 500 else 400
            return jsonify({"error": "the engine refused or could not serve the request",
                            "engine_status": refused[0]}), status
        raise exc

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> ResponseReturnValue:
        if exc.code == 413:
            limit = app.config["MAX_CONTENT_LENGTH"]
            return jsonify({"error": f"the request body is over {limit} bytes "
                                     "(ES_INTEREST_API_MAX_BODY_MB); send smaller batches"}), 413
        return jsonify({"error": exc.description}), exc.code or 500
