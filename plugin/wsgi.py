"""WSGI entry point: ``gunicorn 'plugin.wsgi:app'``."""

from plugin.api import create_app

app = create_app()
