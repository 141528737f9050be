"""The worker process's Celery app, from the environment (``celery -A workers.app:app``)."""

from __future__ import annotations

from plugin.celery_app import make_celery
from plugin.config import load_settings

app = make_celery(load_settings())
