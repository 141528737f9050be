"""GET /health: whether the engine, Redis, the workers and the model answer."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from plugin.api.context import services

bp = Blueprint("health", __name__)


@bp.get("/health")
def health() -> ResponseReturnValue:
    svc = services()
    checks: dict[str, Any] = {}
    try:
        engine = svc.engine
        checks["engine"] = {"ok": bool(engine.client.ping()), "kind": engine.kind.value,
                            "version": engine.version}
    except Exception as exc:
        checks["engine"] = {"ok": False, "error": type(exc).__name__}
    try:
        checks["redis"] = {"ok": bool(svc.redis.ping())}
    except Exception as exc:
        checks["redis"] = {"ok": False, "error": type(exc).__name__}
    try:
        replies = svc.celery.control.ping(timeout=0.5) or []
        checks["workers"] = {"ok": bool(replies), "count": len(replies)}
    except Exception as exc:
        checks["workers"] = {"ok": False, "error": type(exc).__name__}
    try:
        checks["model"] = {"ok": True, "dims": svc.embedder.dims}
    except Exception as exc:
        checks["model"] = {"ok": False, "error": type(exc).__name__}
    ok = all(c["ok"] for c in checks.values())
    return jsonify({"ok": ok, **checks}), 200 if ok else 503
