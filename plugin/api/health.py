"""GET /health: whether the engine, Redis, the workers and the model answer, within ~2 s, and
whether every queue of the deployment has a worker consuming it."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from plugin.api.context import services
from plugin.celery_app import deployment_queues
from plugin.services import Services

bp = Blueprint("health", __name__)
# The whole answer's budget: a stalled service is reported as such, not waited for.
BUDGET_S = 2.0
# Checks run in threads that may outlive a request when a service stalls; a few suffice.
_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="health")


def _engine(svc: Services) -> dict[str, Any]:
    engine = svc.engine
    return {"ok": bool(engine.ping()), "kind": engine.kind.value,
            "version": engine.version}


def _redis(svc: Services) -> dict[str, Any]:
    return {"ok": bool(svc.redis.ping())}


def _workers(svc: Services) -> dict[str, Any]:
    """The workers that answer, and the deployment's queues none of them consumes (an event
    partition without an owner: its users' feedback waits until one starts)."""
    answers = svc.celery.control.inspect(timeout=0.5).active_queues() or {}
    consumed = {queue["name"] for queues in answers.values() for queue in queues or ()}
    idle = [q for q in deployment_queues(svc.settings.event_partitions) if q not in consumed]
    return {"ok": bool(answers) and not idle, "count": len(answers),
            "queues_without_consumer": idle}


def _model(svc: Services) -> dict[str, Any]:
    model = svc.content_model()
    # The configured model, or the one `es-interest model switch` moved the deployment to.
    found: dict[str, Any] = {"ok": True, "version": model.version or "configured"}
    embedder = svc.loaded_embedder()
    if embedder is None:  # not loaded yet: the first search loads it
        return {**found, "loaded": False}
    return {**found, "loaded": True, "dims": embedder.dims}


CHECKS: dict[str, Callable[[Services], dict[str, Any]]] = {
    "engine": _engine, "redis": _redis, "workers": _workers, "model": _model}


@bp.get("/health")
def health() -> ResponseReturnValue:
    svc = services()
    futures = {name: _POOL.submit(check, svc) for name, check in CHECKS.items()}
    wait(futures.values(), timeout=BUDGET_S)
    checks: dict[str, Any] = {}
    for name, future in futures.items():
        if not future.done():
            checks[name] = {"ok": False, "error": f"no answer within {BUDGET_S:g} s"}
        elif future.exception() is not None:
            checks[name] = {"ok": False, "error": type(future.exception()).__name__}
        else:
            checks[name] = future.result()
    ok = all(c["ok"] for c in checks.values())
    return jsonify({"ok": ok, **checks}), 200 if ok else 503
