"""API keys: stored as SHA-256 hashes in Redis, each with scopes, a rate limit and, for a
tenant's key, the user ids it may name (a prefix): such a key reads and writes only those
users' profiles, personalizes only for them, and sends events only for them."""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Flask, Response, g, request, session
from flask_limiter import Limiter

from plugin.api.context import services
from plugin.api.errors import ApiError
from plugin.services import Services

SCOPES = ("read", "write")
# The inspector page (/ui/, its blueprint "ui") carries a key's digest in its session cookie.
UI_BLUEPRINT, SESSION_DIGEST = "ui", "api_key_sha256"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ApiKey:
    name: str
    scopes: tuple[str, ...]
    rate: str  # a flask-limiter rate string, e.g. "600/minute"
    user_prefix: str | None = None  # None: every user; else only ids that start with it

    def allows_user(self, user_id: str) -> bool:
        return self.user_prefix is None or user_id.startswith(self.user_prefix)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _keys(svc: Services) -> str:
    """The deployment's hash of key digests (plugin/config.py, redis_key)."""
    return svc.settings.redis_key("api-keys")


def create_key(svc: Services, name: str, scopes: tuple[str, ...], rate: str,
               user_prefix: str | None = None) -> str:
    """Store a new key's hash and return the key itself (shown once, never stored)."""
    key = "esi_" + secrets.token_urlsafe(32)
    svc.redis.hset(_keys(svc), digest(key), json.dumps({"name": name, "scopes": list(scopes),
                                               "rate": rate, "user_prefix": user_prefix}))
    return key


def _from_record(data: dict[str, Any]) -> ApiKey:
    return ApiKey(data["name"], tuple(data["scopes"]), data["rate"], data.get("user_prefix"))


def lookup(svc: Services, key: str) -> ApiKey | None:
    """The stored key, or None when ``key`` is not one."""
    return _by_digest(svc, digest(key))


def _by_digest(svc: Services, key_digest: str) -> ApiKey | None:
    raw = svc.redis.hget(_keys(svc), key_digest)
    return None if raw is None else _from_record(json.loads(raw))


def list_keys(svc: Services) -> list[ApiKey]:
    return [_from_record(json.loads(v)) for v in svc.redis.hvals(_keys(svc))]


def revoke_key(svc: Services, name: str) -> int:
    doomed = [h for h, v in svc.redis.hgetall(_keys(svc)).items()
              if json.loads(v)["name"] == name]
    return int(svc.redis.hdel(_keys(svc), *doomed)) if doomed else 0


def _presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("ApiKey "):
        return header[len("ApiKey "):].strip()
    return request.headers.get("X-Api-Key")


def identify() -> None:
    """Before every request (and before the rate limiter): whose key is this, if any."""
    svc = services()
    g.api_key = None
    if svc.settings.api_auth == "disabled":
        g.api_key = ApiKey("anonymous", SCOPES, svc.settings.api_default_rate)
        return
    presented = _presented_key()
    if presented:
        g.api_key = _by_digest(svc, digest(presented))
        if g.api_key is None:
            g.key_problem = "unknown API key"
    elif request.blueprint == UI_BLUEPRINT and isinstance(session.get(SESSION_DIGEST), str):
        g.api_key = _by_digest(svc, session[SESSION_DIGEST])  # None once revoked


def require(scope: str) -> Callable[[F], F]:
    """Let the request through only with a key that has ``scope`` (unless auth is off)."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            key: ApiKey | None = g.get("api_key")
            if key is None:
                raise ApiError(401, g.get("key_problem")
                               or "missing API key: send 'Authorization: ApiKey <key>'")
            if scope not in key.scopes:
                raise ApiError(403, f"this API key lacks the '{scope}' scope")
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorate


def check_user(user_id: str) -> None:
    """403 unless this request's key may name ``user_id`` (tenant keys name a prefix)."""
    key: ApiKey | None = g.get("api_key")
    if key is not None and not key.allows_user(user_id):
        raise ApiError(403, f"this API key serves only users whose id starts with "
                            f"{key.user_prefix!r}")


def user_allowed(user_id: str) -> bool:
    key: ApiKey | None = g.get("api_key")
    return key is None or key.allows_user(user_id)


def rate_key() -> str:
    key = g.get("api_key")
    return f"key:{key.name}" if key else f"ip:{request.remote_addr}"


def rate_limit() -> str:
    key = g.get("api_key")
    return key.rate if key else services().settings.api_default_rate


def install_rate_limits(app: Flask, svc: Services) -> Callable[..., Any]:
    """Per-key rate limits in Redis (fixed windows); returns the decorator that applies them
    to a blueprint. Only a refusal (429) carries the limit's headers: reading the window for
    them costs Redis round trips, which every answer paid before."""
    limiter = Limiter(rate_key, app=app, storage_uri=svc.settings.redis_url,
                      key_prefix=svc.settings.redis_key("rate"), strategy="fixed-window",
                      headers_enabled=False,
                      # A Redis outage is answered by the key check (503), not by the limiter.
                      swallow_errors=True)

    @app.after_request
    def refusal_headers(response: Response) -> Response:
        if response.status_code == 429 and (limit := limiter.current_limit) is not None:
            reset_at = limit.reset_at
            response.headers["X-RateLimit-Limit"] = str(limit.limit.amount)
            response.headers["X-RateLimit-Remaining"] = "0"
            response.headers["X-RateLimit-Reset"] = str(reset_at)
            response.headers["Retry-After"] = str(max(1, reset_at - int(time.time())))
        return response

    return limiter.shared_limit(rate_limit, scope="api")
