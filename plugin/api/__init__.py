"""The Flask query-rewrite layer: an app factory with one blueprint per concern."""

from __future__ import annotations

import logging

from flask import Flask
from flask_cors import CORS

from plugin.api.json_body import RequestJsonProvider
from plugin.config import Settings
from plugin.services import Services


def create_app(settings: Settings | None = None) -> Flask:
    services = Services(settings, serving=True)
    app = Flask("es_interest")
    app.json = RequestJsonProvider(app)
    app.extensions["es_interest"] = services
    app.config["MAX_CONTENT_LENGTH"] = int(services.settings.api_max_body_mb * 1024 * 1024)
    # Request lines carry queries and user ids: keep them out of the logs.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    from plugin.api import auth, budget, errors, metrics
    from plugin.api.health import bp as health_bp
    from plugin.api.ingest import bp as ingest_bp
    from plugin.api.openapi import bp as openapi_bp
    from plugin.api.proxy import bp as proxy_bp
    from plugin.api.search import bp as search_bp
    from plugin.api.ui import bp as ui_bp
    from plugin.api.ui import install as install_ui
    from plugin.api.users import bp as users_bp

    errors.register(app)  # its after_request runs after the limiter's (registered later)
    budget.register(app, services.settings.search_timeout_s)
    metrics.instrument(app)
    app.before_request(auth.identify)  # before the limiter's hook: limits are per key
    if services.settings.cors_origins:
        CORS(app, origins=list(services.settings.cors_origins))
    limited = auth.install_rate_limits(app, services)
    for bp in (search_bp, proxy_bp, ingest_bp, users_bp, ui_bp):
        limited(bp)  # per API key, or per address for requests without a valid key
    for bp in (search_bp, proxy_bp, ingest_bp, users_bp):
        app.register_blueprint(bp)
    install_ui(app, services)  # the inspector page, with its own session handling
    for bp in (health_bp, metrics.bp, openapi_bp):
        app.register_blueprint(bp)
    return app
