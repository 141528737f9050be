"""Access to the app's shared services from a request."""

from __future__ import annotations

from flask import current_app

from plugin.services import Services


def services() -> Services:
    found: Services = current_app.extensions["es_interest"]
    return found
