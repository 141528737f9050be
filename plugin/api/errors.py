"""Errors as JSON: every 4xx says what was wrong, and nothing the user sent is logged."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify
from flask.typing import ResponseReturnValue
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from plugin.api.json_body import UnreadableJson

# Seconds a client should wait after a 503 (an outage or an overloaded engine).
OUTAGE_RETRY_AFTER_S = 1


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def unavailable_service(exc: BaseException) -> str | None:
    """Which backing service ``exc`` says is down or stalled, if any."""
    import redis

    from plugin.engine import EngineError, transient_errors

    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return "Redis (API keys, rate limits, the queue)"
    if isinstance(exc, (EngineError, *transient_errors())):
        return "the search engine"
    return None


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> ResponseReturnValue:
        return jsonify({"error": exc.message, **exc.extra}), exc.status

    @app.errorhandler(UnreadableJson)
    def unreadable(exc: UnreadableJson) -> ResponseReturnValue:
        return jsonify({"error": str(exc)}), 400

    @app.errorhandler(ValidationError)
    def invalid(exc: ValidationError) -> ResponseReturnValue:
        return jsonify({"error": validation_message(exc)}), 400

    @app.errorhandler(Exception)
    def engine_trouble(exc: Exception) -> ResponseReturnValue:
        from plugin.api.context import services

        down = unavailable_service(exc)
        if down is not None:
            return jsonify({"error": f"{down} is unavailable or too slow; retry shortly"}), 503
        engine = services().engine
        refused = engine.api_error(exc)
        if refused is not None:
            if engine.is_busy(exc) or refused[0] >= 500:
                # Overloaded (a circuit breaker, full queues) or down: come back shortly.
                return jsonify({"error": "the engine is overloaded or unavailable; retry",
                                "engine_status": refused[0]}), 503
            return jsonify({"error": "the engine refused the request",
                            "engine_status": refused[0]}), 400
        raise exc

    @app.after_request
    def outage_retry_after(response: Response) -> Response:
        # The rate limiter stamps its window's reset on every answer; an outage's 503 says
        # "again in a second", which is what a client should do.
        if response.status_code == 503:
            response.headers["Retry-After"] = str(OUTAGE_RETRY_AFTER_S)
        elif response.status_code != 429:
            response.headers.pop("Retry-After", None)  # only a refusal says when to return
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> ResponseReturnValue:
        if exc.code == 413:
            limit = app.config["MAX_CONTENT_LENGTH"]
            return jsonify({"error": f"the request body is over {limit} bytes "
                                     "(ES_INTEREST_API_MAX_BODY_MB); send smaller batches"}), 413
        return jsonify({"error": exc.description}), exc.code or 500
