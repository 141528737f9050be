"""The Flask query-rewrite layer: an app factory with one blueprint per concern."""

from __future__ import annotations

from flask import Flask

from plugin.config import Settings
from plugin.services import Services


def create_app(settings: Settings | None = None) -> Flask:
    app = Flask("es_interest")
    app.extensions["es_interest"] = Services(settings)

    from plugin.api.health import bp as health_bp
    from plugin.api.search import bp as search_bp

    app.register_blueprint(health_bp)
    app.register_blueprint(search_bp)
    return app
