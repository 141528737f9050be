"""The ``es-interest`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from plugin.config import load_settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Personalized Elasticsearch search from dynamic user-interest embeddings.

    Configuration comes from ES_INTEREST_* environment variables (see README).
    """


@main.command()
def setup() -> None:
    """Create the documents, events and interests indices behind their aliases (idempotent)."""
    from plugin.indices import setup_indices
    from plugin.services import Services

    services = Services()
    for line in setup_indices(services.engine, services.settings, services.embedder.dims):
        click.echo(line)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--concurrency", "-c", default=2, show_default=True, help="worker processes")
@click.option("--loglevel", "-l", default="info", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(concurrency: int, loglevel: str, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker for the ingestion tasks (extra arguments go to Celery)."""
    from workers.app import app

    app.worker_main(["worker", f"--concurrency={concurrency}", f"--loglevel={loglevel}",
                     *celery_args])


@main.command()
@click.option("--host", default=None, help="default: ES_INTEREST_API_HOST")
@click.option("--port", default=None, type=int, help="default: ES_INTEREST_API_PORT")
def serve(host: str | None, port: int | None) -> None:
    """Serve the HTTP API (development server; use gunicorn 'plugin.wsgi:app' in production)."""
    from plugin.api import create_app

    settings = load_settings()
    create_app(settings).run(host=host or settings.api_host, port=port or settings.api_port,
                             threaded=True)


@main.command()
@click.argument("query")
@click.option("--user", "user_id", default=None, help="personalize for this user id")
@click.option("--size", default=10, show_default=True)
def search(query: str, user_id: str | None, size: int) -> None:
    """Run one search and print its hits as JSON."""
    from plugin import search as search_service
    from plugin.services import Services

    result = search_service.search(Services(), query, user_id=user_id, size=size)
    json.dump({"personalized": result.personalized, "reason": result.reason,
               "hits": result.hits}, sys.stdout, indent=2)
    click.echo()


@main.command()
@click.option("--data", "data_dir", type=click.Path(path_type=Path, file_okay=False),
              default=None, help="MovieLens folder (default: the sample shipped in data/)")
@click.option("--movies", default=2000, show_default=True, help="how many movies to index")
@click.option("--api", "api_url", default=None, help="API base URL (default: from settings)")
def demo(data_dir: Path | None, movies: int, api_url: str | None) -> None:
    """Index MovieLens movies, send one user's feedback, show search before and after."""
    from plugin.demo import run_demo

    run_demo(data_dir, movies, api_url)


if __name__ == "__main__":
    main()
