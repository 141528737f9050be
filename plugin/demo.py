"""`make demo`: the whole loop on real services, from an empty index to a personalized ranking."""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import click

from plugin.api.auth import create_key, revoke_key
from plugin.celery_app import send_events
from plugin.config import load_settings
from plugin.indices import setup_indices
from plugin.movielens import movie_documents, rating_event, ratings
from plugin.pipeline import behaviour, erase_user, popularity
from plugin.progress import progress
from plugin.services import Services

DEMO_USER = "demo-user"
QUERY = "adventure"
BATCH = 250
EVENT_BATCH = 1000


def _api_search(api_url: str, key: str, query: str, user_id: str | None) -> dict[str, Any]:
    params = {"q": query, "size": 10, **({"user_id": user_id} if user_id else {})}
    url = f"{api_url}/search?{urllib.parse.urlencode(params)}"
    request = urllib.request.Request(url, headers={"Authorization": f"ApiKey {key}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        result: dict[str, Any] = json.load(response)
    return result


def _wait_for_api(api_url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=30) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise click.ClickException(f"the API at {api_url} did not become healthy")
        time.sleep(1)


def _other_users(services: Services, data_dir: Path | None, movie_ids: set[str]) -> None:
    """MovieLens users' ratings of the indexed movies, sent as the events a deployment
    collects; then what they teach: documents' popularity, and behaviour vectors (what
    `es-interest train` does). The events keep the ratings' ids: a second run finds them
    applied and counts nothing twice."""
    history = [e for r in ratings(data_dir)
               if r.movie_id in movie_ids and (e := rating_event(r)) is not None]
    applied = before = errors = 0
    with progress(total=len(history), desc="other users' ratings", unit="event") as bar:
        for size, result in send_events(services.celery, history, EVENT_BATCH):
            report = result.get(timeout=600)
            applied += len(report["done"])
            before += len(report["duplicates"])
            errors += len(report["errors"])
            bar.update(size)
    users = len({e["user_id"] for e in history})
    click.echo(f"{users} MovieLens users' ratings of these movies as events: {applied} applied, "
               f"{before} applied by an earlier run, {errors} errors")
    with progress(desc="behaviour vectors: training, re-folding users", unit="user") as bar:
        trained = behaviour.train(services, progress=bar.update)
    click.echo(f"behaviour vectors: {trained.get('documents', 0)} movies from "
               f"{trained.get('pairs', 0)} likes")
    popularity.flush(services, refresh=True, max_docs=0)


def _print_hits(label: str, result: dict[str, Any]) -> list[str]:
    click.echo(f"\n{label} (personalized: {result['personalized']}"
               f"{'' if result['personalized'] else ', ' + str(result['reason'])})")
    for rank, hit in enumerate(result["hits"], 1):
        click.echo(f"  {rank:2d}. {hit['title']}  [{', '.join(hit['tags'][:4])}]")
    return [hit["id"] for hit in result["hits"]]


def run_demo(data_dir: Path | None, movies: int, api_url: str | None) -> None:
    settings = load_settings()
    api_url = api_url or f"http://{settings.api_host}:{settings.api_port}"
    services = Services(settings)
    celery = services.celery

    click.echo(f"engine: {services.engine.kind.value} {services.engine.version} at "
               f"{settings.engine_url}")
    for line in setup_indices(services.engine, settings, services.embedder.dims):
        click.echo(f"index  {line}")
    worker = celery.send_task("es_interest.ping").get(timeout=120)
    click.echo(f"worker: pid {worker['pid']} answers, model dims {worker['dims']}")

    docs = movie_documents(data_dir, limit=movies)
    batches = [docs[i:i + BATCH] for i in range(0, len(docs), BATCH)]
    pending = [celery.send_task("es_interest.index_documents", args=[batch])
               for batch in batches]
    indexed, errors = 0, 0
    with progress(total=len(docs), desc="indexing movies", unit="doc") as bar:
        for result in pending:
            report = result.get(timeout=600)
            indexed += len(report["done"])
            errors += len(report["errors"])
            bar.update(len(report["done"]) + len(report["errors"]))
    services.engine.refresh(settings.docs_alias)
    click.echo(f"indexed {indexed} movies ({errors} errors)")
    _other_users(services, data_dir, {d["id"] for d in docs})

    # Start the demo user from nothing, so that every run shows the same before and after.
    erase_user(services, DEMO_USER)
    _wait_for_api(api_url)
    key = create_key(services, "demo", ("read",), settings.api_default_rate)
    before = _print_hits(f"'{QUERY}' for {DEMO_USER}, before any feedback",
                         _api_search(api_url, key, QUERY, DEMO_USER))

    # The demo user loves animated family films: like a few of them, most recent last. They
    # happen after the erase above (an erase drops later-arriving events from before it).
    liked = [d for d in docs if {"Animation", "Children"} <= set(d["metadata"]["genres"])][:6]
    now = time.time()
    # Ids of this run's own: the ids of an earlier run's events are remembered as applied
    # (a redelivery must not fold twice), and the erase removed what they had folded.
    events = [{"event_id": f"demo-{int(now)}-{d['id']}", "user_id": DEMO_USER, "doc_id": d["id"],
               "type": "like", "timestamp": now + i} for i, d in enumerate(liked)]
    click.echo(f"\n{DEMO_USER} likes: " + "; ".join(d["title"] for d in liked))
    report = celery.send_task("es_interest.ingest_events", args=[events]).get(timeout=120)
    click.echo(f"events applied: {len(report['done'])}, errors: {len(report['errors'])}")

    after = _print_hits(f"'{QUERY}' for {DEMO_USER}, after the feedback",
                        _api_search(api_url, key, QUERY, DEMO_USER))
    revoke_key(services, "demo")
    # A figure to check by eye: how many hits share a genre with the likes, beyond the
    # query's own (every hit for "adventure" is an adventure).
    genres = {d["id"]: set(d["metadata"]["genres"]) for d in docs}
    liked_genres = set.intersection(*(genres[d["id"]] for d in liked)) - {QUERY.title()}
    liked_ids = {d["id"] for d in liked}
    for label, ids in (("before", before), ("after", after)):
        sharing = sum(1 for i in ids if genres.get(i, set()) & liked_genres)
        click.echo(f"{label} the feedback: {sharing} of the top {len(ids)} are "
                   f"{' or '.join(sorted(liked_genres))} films like the ones liked"
                   + (f" ({len(liked_ids & set(ids))} of them the liked ones)"
                      if label == "after" else ""))
    if after == before:
        click.echo("\nthe personalized ranking did not change: something is wrong", err=True)
        sys.exit(1)
    moved = sum(1 for a, b in zip(before, after, strict=False) if a != b)
    click.echo(f"\npersonalization changed {moved} of the top {len(after)} positions")
    page = f"{api_url}/ui/users/{DEMO_USER}?q={urllib.parse.quote(QUERY)}"
    click.echo(f"see why in the inspector: {page}\n(it asks for a key with the read scope: "
               "es-interest api-key create NAME --scope read)")
