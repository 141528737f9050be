"""The inspector page, /ui/: what the layer believes about a user and why a result moved.

Server-rendered (Jinja templates, one stylesheet, inline SVG plots; no script, no CDN). Behind
the same API keys as the JSON API: a key entered once is kept in a signed session cookie, as
its SHA-256 (the key itself never leaves the form post), and looked up again on every request,
so a revoked key stops working at once. Pages only read; tenant keys see only their users.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis
from flask import (
    Blueprint,
    Flask,
    Request,
    Response,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from flask.typing import ResponseReturnValue
from pydantic import ValidationError

from plugin import search as search_service
from plugin.api import auth
from plugin.api.context import services
from plugin.api.errors import ApiError, validation_message
from plugin.api.schemas import Weights
from plugin.config import BLEND_TERMS
from plugin.profile import Drift, describe_user, interest_history
from plugin.services import Services

PREFIX = "/ui"
bp = Blueprint(auth.UI_BLUEPRINT, __name__, url_prefix=PREFIX, template_folder="templates",
               static_folder="static")
RESULTS = 10
CSRF = "csrf"
F = TypeVar("F", bound=Callable[..., ResponseReturnValue])


# -- sessions ----------------------------------------------------------------------------------


class InspectorSessions(SecureCookieSessionInterface):
    """Signed-cookie sessions for /ui/ only (the JSON API never reads or sets a cookie). The
    secret is ES_INTEREST_UI_SECRET or else one random secret kept in Redis, so every API
    process (gunicorn workers, replicas) accepts the others' cookies."""

    def __init__(self, svc: Services) -> None:
        self.services = svc

    def open_session(self, app: Flask, request: Request) -> Any:
        # The URL is matched after the session opens: go by the path, not the blueprint.
        if request.path != PREFIX and not request.path.startswith(PREFIX + "/"):
            return None  # Flask then uses a null session: nothing read, nothing set
        if not app.secret_key:
            try:
                app.secret_key = (self.services.settings.ui_secret
                                  or _shared_secret(self.services))
            except (redis.ConnectionError, redis.TimeoutError):
                # Redis is down: no session this time; the key check then answers 503.
                return None
        return super().open_session(app, request)


def _shared_secret(svc: Services) -> str:
    key = svc.settings.redis_key("ui-secret")
    svc.redis.set(key, secrets.token_urlsafe(48), nx=True)
    raw = svc.redis.get(key)
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def csrf_token() -> str:
    """The session's token that the page's forms send back: a form posted from another
    site (login CSRF: signing a browser in with someone else's key) carries none."""
    if not isinstance(session.get(CSRF), str):
        session[CSRF] = secrets.token_urlsafe(24)
    return str(session[CSRF])


def _form_is_ours() -> bool:
    sent, expected = request.form.get("csrf", ""), session.get(CSRF)
    return isinstance(expected, str) and secrets.compare_digest(sent, expected)


@bp.after_request
def _page_headers(response: Response) -> Response:
    # Never framed (clickjacking), and the page runs nothing it did not serve itself.
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
    return response


def install(app: Flask, svc: Services) -> None:
    """Register the page with its session handling on ``app``."""
    app.session_interface = InspectorSessions(svc)
    app.config.update(SESSION_COOKIE_NAME="es_interest_ui", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_PATH="/ui",
                      SESSION_COOKIE_SECURE=svc.settings.ui_secure_cookie)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.register_blueprint(bp)


def _needs_key(view: F) -> F:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> ResponseReturnValue:
        key: auth.ApiKey | None = g.get("api_key")
        if key is None or "read" not in key.scopes:
            problem = None if key is None else "this API key lacks the 'read' scope"
            return render_template("ui/key.html", problem=problem), 401
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


@bp.errorhandler(ApiError)
def _error_page(error: ApiError) -> ResponseReturnValue:
    return render_template("ui/error.html", status=error.status,
                           message=error.message), error.status


@bp.post("/key")
def enter_key() -> ResponseReturnValue:
    if not _form_is_ours():
        return render_template("ui/key.html", problem="this form expired or came from another "
                               "site; enter the key again"), 400
    presented = (request.form.get("key") or "").strip()
    found = auth.lookup(services(), presented) if presented else None
    if found is None:
        return render_template("ui/key.html", problem="unknown API key"), 401
    if "read" not in found.scopes:
        return render_template("ui/key.html",
                               problem="this API key lacks the 'read' scope"), 403
    session.clear()
    session[auth.SESSION_DIGEST] = auth.digest(presented)
    return redirect(url_for("ui.index"))


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    if not _form_is_ours():
        return redirect(url_for("ui.index"))
    session.clear()
    return redirect(url_for("ui.index"))


@bp.app_template_filter("ms_time")
def _ms_time(epoch_ms: Any) -> str:
    if not isinstance(epoch_ms, int | float):
        return "-"
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- pages -------------------------------------------------------------------------------------


@bp.get("/")
@_needs_key
def index() -> ResponseReturnValue:
    user_id = (request.args.get("user_id") or "").strip()
    if user_id:
        return redirect(url_for("ui.user", user_id=user_id))
    return render_template("ui/index.html", users=_recent_users(services()),
                           key=g.api_key)


@bp.get("/users/<path:user_id>")
@_needs_key
def user(user_id: str) -> ResponseReturnValue:
    auth.check_user(user_id)
    overrides = _weight_overrides()  # bad input is refused before any lookup
    svc = services()
    described = describe_user(svc, user_id)
    if described is None:
        raise ApiError(404, f"no interests for user {user_id!r} (no applied event yet)")
    query = (request.args.get("q") or "").strip()
    strategies = search_service.available_strategies(svc)
    strategy = request.args.get("strategy") or search_service.default_strategy(svc)
    if strategy not in strategies:
        raise ApiError(400, f"strategy {strategy!r} is not available here; "
                            f"available: {', '.join(strategies)}")
    comparison = _compare(svc, query, user_id, strategy, overrides) if query else None
    history = interest_history(svc, user_id)
    return render_template(
        "ui/user.html", user=described, query=query, strategy=strategy, strategies=strategies,
        comparison=comparison, history=history, terms=BLEND_TERMS, overrides=overrides,
        lines=_similarity_chart(history), path=_path_chart(history), key=g.api_key)


def _recent_users(svc: Services, size: int = 20) -> list[dict[str, Any]]:
    """Users whose interests changed last (a tenant key sees only its own)."""
    key: auth.ApiKey = g.api_key
    query: dict[str, Any] = {"match_all": {}}
    if key.user_prefix is not None:
        query = {"prefix": {"user_id": key.user_prefix}}
    found = svc.engine.search(svc.settings.interests_alias, {
        "size": size, "query": query, "sort": [{"updated_at": "desc"}],
        "_source": ["user_id", "event_count", "updated_at", "top_tags"]})
    return [h["_source"] for h in found["hits"]["hits"]]


# -- personalized beside plain -----------------------------------------------------------------


def _weight_overrides() -> dict[str, float]:
    """``w_<term>`` fields of the form: weights to try instead of the configured ones, within
    the same bounds as /search's (``schemas.Weights``)."""
    given = {t: raw.strip() for t in BLEND_TERMS
             if (raw := request.args.get(f"w_{t}") or "").strip()}
    try:
        weights = Weights.model_validate(given)
    except ValidationError as exc:
        raise ApiError(400, validation_message(exc)) from None
    return {t: v for t, v in weights.model_dump().items() if v is not None}


def _compare(svc: Services, query: str, user_id: str, strategy: str,
             overrides: Mapping[str, float]) -> dict[str, Any]:
    """The same query plain and personalized, each hit with its components and its move."""
    base = search_service.SearchParams(query, size=RESULTS, strategy=strategy, explain=True,
                                       overrides=dict(overrides))
    plain = search_service.search(svc, base)
    mine = search_service.search(svc, replace(base, user_id=user_id))
    plain_at = {h["id"]: n for n, h in enumerate(plain.hits, 1)}
    mine_at = {h["id"]: n for n, h in enumerate(mine.hits, 1)}
    return {"plain": _ranked(plain.hits, plain_at, mine_at),
            "personalized": _ranked(mine.hits, plain_at, mine_at),
            "personalized_flag": mine.personalized, "reason": mine.reason,
            "weights": asdict(mine.weights) if mine.weights else {},
            "took_ms": (round(plain.took_ms, 1), round(mine.took_ms, 1))}


def _ranked(hits: Sequence[Mapping[str, Any]], plain_at: Mapping[str, int],
            mine_at: Mapping[str, int]) -> list[dict[str, Any]]:
    """Each hit with its position and what personalization did to it, on both sides: up or
    down by how many places (plain position - personalized position), or None when it is in
    one list only (new in the personalized list; out of it, seen from the plain one)."""
    rows = []
    for n, hit in enumerate(hits, 1):
        before, after = plain_at.get(hit["id"]), mine_at.get(hit["id"])
        moved = None if before is None or after is None else before - after
        rows.append({**hit, "rank": n, "moved": moved})
    return rows


# -- plots (SVG geometry; the template draws it) ------------------------------------------------

WIDTH, HEIGHT, PAD = 640, 220, 36


def _similarity_chart(history: Drift) -> dict[str, Any]:
    """Polylines of the similarities over the user's events (y: cosine, -1..1 clipped to 0..1
    when all are positive, which is the usual case)."""
    series = {"long-term vs latest": history.long_to_latest,
              "short-term vs latest": history.short_to_latest,
              "long-term vs previous snapshot": history.long_step}
    values = [v for s in series.values() for v in s if v is not None]
    low = 0.0 if not values or min(values) >= 0 else -1.0
    count = len(history.snapshots)

    def x(i: int) -> float:
        return PAD + (WIDTH - 2 * PAD) * (i / (count - 1) if count > 1 else 0.5)

    def y(v: float) -> float:
        return HEIGHT - PAD - (HEIGHT - 2 * PAD) * (v - low) / (1.0 - low)

    lines = []
    for name, points in series.items():
        coords = [f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(points) if v is not None]
        lines.append({"name": name, "points": " ".join(coords), "count": len(coords)})
    events = [s.events for s in history.snapshots]
    return {"width": WIDTH, "height": HEIGHT, "pad": PAD, "lines": lines, "low": low,
            "ticks": [(round(y(t), 1), t) for t in (low, (low + 1) / 2, 1.0)],
            "first": events[0] if events else 0, "last": events[-1] if events else 0}


def _path_chart(history: Drift) -> dict[str, Any]:
    """The long-term vector's path in its first two principal components, old to new."""
    points = [(i, p) for i, p in enumerate(history.path) if p is not None]
    if not points:
        return {"points": [], "width": HEIGHT, "height": HEIGHT}
    xs = [p[0] for _, p in points]
    ys = [p[1] for _, p in points]
    span = max(max(xs) - min(xs), max(ys) - min(ys)) or 1.0
    size = HEIGHT - 2 * PAD
    drawn = []
    for n, (i, (px, py)) in enumerate(points):
        drawn.append({"x": round(PAD + size * (px - min(xs)) / span, 1),
                      "y": round(HEIGHT - PAD - size * (py - min(ys)) / span, 1),
                      "age": n / max(1, len(points) - 1),
                      "events": history.snapshots[i].events})
    return {"points": drawn, "width": HEIGHT, "height": HEIGHT,
            "polyline": " ".join(f"{d['x']},{d['y']}" for d in drawn),
            "explained": round(100 * history.explained)}
