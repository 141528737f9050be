"""The ``es-interest`` command line."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from plugin.config import LOCAL_ENGINE_URLS, load_settings

# sysexits' EX_TEMPFAIL: nothing is wrong, try again later (a rebuild waiting for events).
EXIT_TRY_AGAIN = 75


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quiet", "-q", is_flag=True,
              help="no progress output (off a terminal it is a plain line every 30 s)")
def main(quiet: bool) -> None:
    """Personalized Elasticsearch search from dynamic user-interest embeddings.

    Configuration comes from ES_INTEREST_* environment variables (see README).
    """
    from plugin.progress import set_quiet

    set_quiet(quiet)


@main.command()
@click.option("--reindex", is_flag=True,
              help="migrate an index whose mapping changed incompatibly into a new one")
@click.option("--repartition", is_flag=True,
              help="store ES_INTEREST_EVENT_PARTITIONS as the new partition count, once the "
                   "old partitions' queues are drained (docs/operations.md, Partitions)")
def setup(reindex: bool, repartition: bool) -> None:
    """Create or upgrade the documents, events and interests indices (idempotent)."""
    from plugin.celery_app import waiting_event_batches
    from plugin.deployment import DeploymentConflict, adopt_legacy_keys, claim
    from plugin.indices import IncompatibleMapping, setup_indices
    from plugin.partitions import PartitionMismatch, check_count
    from plugin.progress import progress
    from plugin.services import Services

    services = Services()
    try:
        claim(services)
        check_count(services.engine, services.settings, waiting=(
            (lambda old: waiting_event_batches(services.celery, services.redis, old))
            if repartition else None))
        with progress(desc="copying", unit="doc", disable=not reindex) as bar:
            lines = setup_indices(services.engine, services.settings, services.embedder.dims,
                                  reindex=reindex, progress=bar.update)
        # (An interests index set up before partitions existed takes the configured count.)
        partitions = check_count(services.engine, services.settings, store=True)
    except (IncompatibleMapping, DeploymentConflict, PartitionMismatch) as exc:
        raise click.ClickException(str(exc)) from None
    lines.append(f"events: {partitions} partitions (queues events.0-{partitions - 1})")
    lines += adopt_legacy_keys(services)
    for line in lines:
        click.echo(line)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--queues", "-Q", default=None,
              help="queues to consume: documents (embedding), events (folding; every partition, "
                   "or those of --partitions), celery (rest)  [default: documents,events,celery; "
                   "with --partitions: events]")
@click.option("--partitions", default=None, metavar="SPEC",
              help="own these event partitions (0-1, 2,3 or all): one process consumes them and "
                   "keeps their users in memory, its threads folding different partitions side "
                   "by side; run one such worker per core, the partitions spread over them "
                   "(docs/operations.md, Partitions)")
@click.option("--pool", "-P", type=click.Choice(["prefork", "threads", "solo"]), default=None,
              help="threads suits the documents queue (one model, I/O overlaps encoding)  "
                   "[default: prefork; with --partitions: threads]")
@click.option("--concurrency", "-c", type=int, default=None,
              help="processes or threads  [default: 2; an owner of partitions: 8, threads "
                   "that mostly wait for their partition's fold and join the next one]")
@click.option("--loglevel", "-l", default="info", show_default=True)
@click.option("--beat", is_flag=True,
              help="also run the schedule (behaviour retraining, popularity flushes); "
                   "in one worker of a deployment only")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(queues: str | None, partitions: str | None, pool: str | None,
           concurrency: int | None, loglevel: str, beat: bool,
           celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker (extra arguments go to Celery's own `worker` command)."""
    from plugin.partitions import PartitionMismatch, check_count, parse_spec, queue_name

    settings = load_settings()
    pool = pool or ("threads" if partitions else "prefork")
    concurrency = concurrency or (8 if partitions and pool == "threads" else 2)
    if pool == "threads":
        _fewer_malloc_arenas()
    if partitions and pool == "prefork" and concurrency > 1:
        raise click.UsageError("an owner of partitions is one process (its users' states live "
                               "in its memory): use --pool threads or solo, and one worker "
                               "per partition range to use more cores")
    try:
        owned = parse_spec(partitions or "all", settings.event_partitions)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--partitions") from None
    names = [q.strip() for q in (queues or ("events" if partitions else
                                            "documents,events,celery")).split(",") if q.strip()]
    # "events" stands for this worker's partition queues.
    names = [n for q in names for n in ([queue_name(p) for p in owned] if q == "events"
                                        else [q])]
    if not os.environ.get("ES_INTEREST_TORCH_THREADS"):
        # Each task that embeds at once gets its share of the cores, processes of a prefork
        # pool and threads alike: two encodes at once that each asked for every core kept
        # twice the threads busy that there are cores (docs/benchmarks.md). (Read when the
        # model loads.)
        share = 1 if pool == "solo" else concurrency  # solo runs one task at a time
        os.environ["ES_INTEREST_TORCH_THREADS"] = str(max(1, (os.cpu_count() or 1) // share))
    from celery.signals import worker_process_init, worker_ready, worker_shutting_down

    from plugin.deployment import DeploymentConflict, claim
    from plugin.services import Services
    from plugin.supervision import supervise

    services = Services(settings)
    app = services.celery  # its tasks (workers.tasks) are loaded by the worker itself
    try:
        claim(services)
        check_count(services.engine, settings)
    except (DeploymentConflict, PartitionMismatch) as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # the engine or Redis is not up yet: start anyway
        click.echo(f"warning: the deployment's claim was not checked ({type(exc).__name__}); "
                   "`es-interest setup` checks it too", err=True)
    asked_to_stop: list[object] = []
    worker_shutting_down.connect(lambda **_: asked_to_stop.append(True), weak=False)
    # The process that runs tasks: this one (threads, solo) or each prefork child.
    worker_ready.connect(lambda **_: _freeze_start_up_objects(), weak=False)
    worker_process_init.connect(lambda **_: _freeze_start_up_objects(), weak=False)
    argv = ["worker", f"--queues={','.join(names)}", f"--pool={pool}",
            f"--concurrency={concurrency}", f"--loglevel={loglevel}",
            *(["--beat"] if beat else []), *celery_args]

    def run() -> int:
        try:
            app.worker_main(argv)
        except SystemExit as stopped:
            return stopped.code if isinstance(stopped.code, int) else 1
        return 0

    # A worker that stopped on its own (an unrecoverable broker error, say) starts again;
    # one asked to stop (SIGTERM, Ctrl-C) stops.
    sys.exit(supervise(run, stopping=lambda: bool(asked_to_stop)))


def _freeze_start_up_objects() -> None:
    """What start-up built (modules, the app, clients) lives as long as the process: out of
    the cyclic collector's sight, a full collection walks only what tasks made since. An
    owner under load paused for a full collection every few seconds, most of it spent on
    start-up's objects (docs/benchmarks.md)."""
    import gc

    gc.collect()
    gc.freeze()


def _fewer_malloc_arenas(arenas: int = 1) -> None:
    """glibc gives each thread that allocates at once an arena of its own, and each keeps its
    freed memory: an owner's eight threads held far more resident memory with eight arenas,
    and more with two than with one, at the same speed (docs/benchmarks.md; the threads
    allocate mostly under the GIL, so they seldom wait for the one arena). Capped as
    MALLOC_ARENA_MAX would (read only at start-up, so set here, before any thread runs); the
    variable itself still wins."""
    import contextlib
    import ctypes
    import ctypes.util

    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to cap
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(-8, arenas)


@main.command()
@click.option("--host", default=None, help="default: ES_INTEREST_API_HOST")
@click.option("--port", default=None, type=int, help="default: ES_INTEREST_API_PORT")
def serve(host: str | None, port: int | None) -> None:
    """Serve the HTTP API (development server; use gunicorn 'plugin.wsgi:app' in production)."""
    from plugin.api import create_app

    settings = load_settings()
    app = create_app(settings)
    dims = app.extensions["es_interest"].embedder.dims  # load the model before any request
    click.echo(f"model ready ({dims} dimensions); serving")
    app.run(host=host or settings.api_host, port=port or settings.api_port, threaded=True)


@main.command()
@click.argument("query")
@click.option("--user", "user_id", default=None, help="personalize for this user id")
@click.option("--size", default=10, show_default=True)
def search(query: str, user_id: str | None, size: int) -> None:
    """Run one search and print its hits as JSON."""
    from plugin import search as search_service
    from plugin.services import Services

    result = search_service.search(
        Services(), search_service.SearchParams(query, user_id=user_id, size=size, explain=True))
    json.dump({"personalized": result.personalized, "reason": result.reason,
               "strategy": result.strategy, "hits": result.hits}, sys.stdout, indent=2)
    click.echo()


@main.group()
def ingest() -> None:
    """Send documents or events from a file (JSON Lines, or CSV with a header) to the workers."""


def _ingest_file(path: Path, send: Callable[..., list[tuple[int, Any]]], batch_size: int,
                 report_path: Path | None) -> None:
    from plugin.ingest_files import InvalidLine, count_lines, read_records
    from plugin.progress import progress
    from plugin.services import Services

    app = Services().celery
    totals = {"done": 0, "duplicates": 0, "pending": 0, "errors": 0}
    errors: list[dict[str, object]] = []
    results: list[tuple[int, Any]] = []
    batch: list[dict[str, object]] = []
    for record in read_records(path):
        if isinstance(record, InvalidLine):
            errors.append({"error": str(record)})
            continue
        batch.append(record)
        if len(batch) >= batch_size:
            results += send(app, batch, batch_size)
            batch = []
    if batch:
        results += send(app, batch, batch_size)
    with progress(total=count_lines(path), desc=f"ingesting {path.name}", unit="item") as bar:
        bar.update(len(errors))
        for size, result in results:
            report = result.get(timeout=3600)
            for key in ("done", "duplicates", "pending"):
                totals[key] += len(report[key])
            errors += report["errors"]
            bar.update(size)
    totals["errors"] = len(errors)
    click.echo(", ".join(f"{k}: {v}" for k, v in totals.items()))
    for error in errors[:10]:
        click.echo(f"  error: {error}", err=True)
    if len(errors) > 10:
        click.echo(f"  ... and {len(errors) - 10} more errors", err=True)
    if report_path:
        report_path.write_text(json.dumps({**totals, "error_list": errors}, indent=2))


FILE = click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
BATCH = click.option("--batch-size", default=500, show_default=True, help="items per task")
REPORT = click.option("--report", "report_path", type=click.Path(path_type=Path),
                      help="write every per-item error to this JSON file")


@ingest.command("documents")
@FILE
@BATCH
@REPORT
def ingest_documents(path: Path, batch_size: int, report_path: Path | None) -> None:
    """Index documents: id, title, body, tags (a list, or '|'-separated in CSV), metadata."""
    from plugin.celery_app import send_documents

    _ingest_file(path, send_documents, batch_size, report_path)


@ingest.command("events")
@FILE
@BATCH
@REPORT
def ingest_events(path: Path, batch_size: int, report_path: Path | None) -> None:
    """Ingest events: event_id, user_id, doc_id, type, weight, timestamp, text, dwell_s."""
    from plugin.celery_app import send_events

    _ingest_file(path, send_events, batch_size, report_path)


@main.command()
@click.option("--user", "user_id", default=None, help="only this user (default: every user)")
def rebuild(user_id: str | None) -> None:
    """Recompute interest vectors exactly by replaying the event log in time order."""
    from plugin import pipeline
    from plugin.progress import progress
    from plugin.services import Services

    services = Services()
    later = (f"a batch awaits its retry or redelivery (at most "
             f"{services.settings.task_visibility_s:g} s, ES_INTEREST_TASK_VISIBILITY_S)")
    if user_id:
        try:
            click.echo(json.dumps(pipeline.rebuild_user(services, user_id)))
        except pipeline.EventsInFlight:
            click.echo(f"deferred: events of this user are not stored yet; {later}. "
                       "Run it again then.", err=True)
            sys.exit(EXIT_TRY_AGAIN)
        return
    with progress(desc="rebuilding users", unit="user") as bar:
        count, deferred = pipeline.rebuild_all(services, progress=bar.update)
    click.echo(f"rebuilt {count} users")
    if deferred:
        click.echo(f"deferred {len(deferred)} users whose events are not stored yet ({later}); "
                   f"run `es-interest rebuild` again then: {', '.join(deferred[:20])}"
                   + (" …" if len(deferred) > 20 else ""), err=True)
        sys.exit(EXIT_TRY_AGAIN)


@main.command()
@click.option("--no-refold", is_flag=True,
              help="only write the documents' vectors (users keep the old version until "
                   "`es-interest rebuild`; search leaves their behaviour term out meanwhile)")
@click.option("--model", "language_model", is_flag=True,
              help="fine-tune the language model on the log's co-interaction pairs instead "
                   "(a new model folder; see --out)")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="with --model: the new model's folder (default: "
                   "~/.cache/es-interest/models/<index prefix>-<time>)")
@click.option("--budget-s", type=click.FloatRange(min=1), default=1800.0, show_default=True,
              help="with --model: stop training after this many seconds")
@click.option("--max-pairs", type=click.IntRange(min=1), default=50_000, show_default=True,
              help="with --model: train on at most this many pairs (a random sample)")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True,
              help="with --model: passes over the pairs (the budget may end it sooner)")
def train(no_refold: bool, language_model: bool, out: Path | None, budget_s: float,
          max_pairs: int, epochs: int) -> None:
    """Learn behaviour (collaborative) vectors from the event log; re-fold every user.

    With --model: fine-tune the sentence-transformers model on pairs of documents one user
    liked close in time (MultipleNegativesRankingLoss) into a new model folder; `es-interest
    model switch FOLDER` moves the running deployment to it."""
    from plugin.progress import progress
    from plugin.services import Services

    services = Services()
    if language_model:
        from plugin.pipeline import language_model as lm

        folder = out or (Path.home() / ".cache/es-interest/models"
                         / f"{services.settings.index_prefix}-{int(time.time())}")
        with progress(desc="fine-tuning", unit="pair") as bar:
            result = lm.train_model(services, folder, budget_s, max_pairs, epochs,
                                    progress=bar.update)
    else:
        from plugin.pipeline import behaviour

        with progress(desc="re-folding users", unit="user") as bar:
            result = behaviour.train(services, refold=not no_refold, progress=bar.update)
    click.echo(json.dumps(result))
    if not result.get("trained"):
        sys.exit(1)


@main.group()
def model() -> None:
    """The sentence-transformers model, its ONNX exports, and switching to another."""


@model.command("switch")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
def model_switch(folder: Path) -> None:
    """Move the running deployment to the model in FOLDER (e.g. from `train --model`):
    documents re-embedded into a new index behind the alias, then the deployment's processes
    embed with it (within seconds), event texts are embedded again and every user is re-folded;
    until a user is, searches leave their content vectors out. The old index is kept."""
    from plugin.pipeline import model_switch as switching
    from plugin.progress import progress
    from plugin.services import Services

    try:
        with progress(desc="re-embedding documents", unit="doc") as bar:
            result = switching.switch(Services(), folder, progress=click.echo,
                                      counted=bar.update)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result))


@model.command("export")
@click.option("--check/--no-check", default=True, show_default=True,
              help="compare each export's vectors with torch's on sample texts")
def model_export(check: bool) -> None:
    """Export the model to ONNX (float and int8) once, offline, for ES_INTEREST_MODEL_BACKEND
    onnx and onnx-int8 (`make venv` runs it; a process that finds no export makes it)."""
    from plugin.embedding import default_model_path
    from plugin.onnx_export import export

    settings = load_settings()
    folder = Path(settings.model or default_model_path())
    cache = Path(settings.model_cache_dir) if settings.model_cache_dir else None
    for int8 in (False, True):
        path = export(folder, int8, cache)
        click.echo(f"{'onnx-int8' if int8 else 'onnx'}: {path}")
    if check:
        import numpy as np

        from plugin.embedding import get_embedder
        from plugin.movielens import movie_documents

        texts = [f"{d['title']} | {', '.join(d['tags'])}" for d in movie_documents(limit=500)]
        reference = get_embedder(str(folder), backend="torch").encode(texts)
        for backend in ("onnx", "onnx-int8"):
            vectors = get_embedder(str(folder), backend=backend, cache_dir=cache).encode(texts)
            cosine = (vectors * reference).sum(axis=1)
            click.echo(f"{backend}: cosine to torch over {len(texts)} texts: mean "
                       f"{float(np.mean(cosine)):.4f}, min {float(np.min(cosine)):.4f}")


@main.group()
def popularity() -> None:
    """Documents' popularity from the event log (written by the workers as events arrive)."""


@popularity.command("flush")
def popularity_flush() -> None:
    """Write every document whose popularity moved past the tolerance, now (workers do it
    every ES_INTEREST_POPULARITY_FLUSH_S, at most ES_INTEREST_POPULARITY_FLUSH_MAX_DOCS at a
    time)."""
    from plugin.pipeline import popularity as pop
    from plugin.services import Services

    click.echo(f"wrote {pop.flush(Services(), max_docs=0)} documents")


@popularity.command("rebuild")
def popularity_rebuild() -> None:
    """Recompute every document's popularity exactly from the applied events in the log."""
    from plugin.pipeline import popularity as pop
    from plugin.services import Services

    click.echo(f"rebuilt the popularity of {pop.rebuild(Services())} documents")


@main.command("inspect")
@click.argument("what", type=click.Choice(["users", "events", "documents"]), default="users")
@click.option("--top", default=10, show_default=True, help="rows of each ranked table")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="also write every table to this CSV file (a 'table' column "
                                 "names each)")
def inspect_indices(what: str, top: int, csv_path: Path | None) -> None:
    """What the indices hold, through eland: users and how stale they are, events per type
    and status, documents without embeddings, the most interacted documents."""
    import pandas as pd

    from plugin.inspection import REPORTS, InspectionUnavailable
    from plugin.services import Services

    services = Services()
    try:
        report = REPORTS[what](services.engine, services.settings, top)
    except InspectionUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    for title, table in report.items():
        click.echo(f"== {title}")
        click.echo(table.to_string(index=False) if len(table) else "(none)")
        click.echo()
    if csv_path is not None:
        frames = [table.assign(table=title) for title, table in report.items()]
        combined = pd.concat(frames, ignore_index=True)
        combined[["table", *[c for c in combined.columns if c != "table"]]].to_csv(
            csv_path, index=False)
        click.echo(f"written: {csv_path}")


@main.group()
def kibana() -> None:
    """Kibana saved objects: data views, a saved search and a dashboard."""


@kibana.command("import")
@click.option("--url", "kibana_url", default="http://127.0.0.1:5601", show_default=True,
              help="Kibana's address (credentials: the engine's, from ES_INTEREST_ENGINE_*)")
def kibana_import(kibana_url: str) -> None:
    """Load kibana/es-interest.ndjson into Kibana (overwriting) and say what it imported."""
    import requests

    from plugin.kibana import import_objects

    try:
        result = import_objects(load_settings(), kibana_url)
    except requests.RequestException as exc:
        raise click.ClickException(f"Kibana at {kibana_url}: {exc}") from None
    for item in result.get("successResults", []):
        click.echo(f"imported {item.get('type')} {item.get('id')}")
    for item in result.get("errors", []):
        click.echo(f"failed {item.get('type')} {item.get('id')}: {item.get('error')}", err=True)
    click.echo(f"{result.get('successCount', 0)} objects imported")
    if not result.get("success", False):
        sys.exit(1)


@main.group("api-key")
def api_key() -> None:
    """API keys for the HTTP API (stored hashed in Redis)."""


@api_key.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, type=click.Choice(["read", "write"]),
              default=["read"], show_default=True)
@click.option("--rate", default=None,
              help="e.g. 600/minute (default: ES_INTEREST_API_DEFAULT_RATE)")
@click.option("--user-prefix", default=None,
              help="a tenant's key: only user ids that start with this (default: every user)")
def api_key_create(name: str, scopes: tuple[str, ...], rate: str | None,
                   user_prefix: str | None) -> None:
    """Create a key and print it (it is shown only this once)."""
    from plugin.api.auth import create_key
    from plugin.services import Services

    services = Services()
    click.echo(create_key(services, name, scopes, rate or services.settings.api_default_rate,
                          user_prefix or None))


@api_key.command("list")
def api_key_list() -> None:
    """Names, scopes and rates of the stored keys."""
    from plugin.api.auth import list_keys
    from plugin.services import Services

    for key in list_keys(Services()):
        users = "all users" if key.user_prefix is None else f"users {key.user_prefix}*"
        click.echo(f"{key.name}\t{','.join(key.scopes)}\t{key.rate}\t{users}")


@api_key.command("revoke")
@click.argument("name")
def api_key_revoke(name: str) -> None:
    """Delete every key of this name."""
    from plugin.api.auth import revoke_key
    from plugin.services import Services

    click.echo(f"revoked {revoke_key(Services(), name)} keys")


@main.group("dead-letter")
def dead_letter() -> None:
    """Tasks that kept failing: list, replay or purge them."""


@dead_letter.command("list")
def dead_letter_list() -> None:
    """Print each dead letter (task, error, when) as a JSON line, arguments left out."""
    from plugin import dead_letter as dl
    from plugin.services import Services

    app = Services().celery

    for entry in dl.entries(app):
        click.echo(json.dumps({k: v for k, v in entry.items() if k not in ("args", "kwargs")}))


@dead_letter.command("replay")
@click.option("--limit", type=int, default=None, help="at most this many (oldest first)")
def dead_letter_replay(limit: int | None) -> None:
    """Send dead letters to the workers again."""
    from plugin import dead_letter as dl
    from plugin.services import Services

    app = Services().celery

    click.echo(f"replayed {len(dl.replay(app, limit))} tasks")


@dead_letter.command("purge")
@click.confirmation_option(prompt="Delete every dead letter?")
def dead_letter_purge() -> None:
    """Delete every dead letter."""
    from plugin import dead_letter as dl
    from plugin.services import Services

    app = Services().celery

    click.echo(f"purged {dl.purge(app)} dead letters")


@main.command("eval")
@click.option("--quick", is_flag=True, help="a few dozen users and a smaller catalog")
@click.option("--users", type=int, default=None, help="how many users (default: all; quick 40)")
@click.option("--engines", default="elasticsearch,opensearch", show_default=True,
              help=f"engines of `make up` to evaluate on ({', '.join(LOCAL_ENGINE_URLS)}); "
                   "the first one tunes the weights")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="default: docs/ (full run), bench/results/eval-quick/ (quick)")
@click.option("--choose/--no-choose", default=None,
              help="choose the title cleanup, behaviour model, seen policy and language model "
                   "on validation (default: the full run does, --quick keeps the configured)")
@click.option("--language-model", type=click.Path(exists=True, file_okay=False,
                                                 path_type=Path), default=None,
              help="a model fine-tuned elsewhere on this split's training pairs (bench/gpu.py) "
                   "to compare on validation instead of fine-tuning here (on a fixed number "
                   "of pairs)")
def evaluate(quick: bool, users: int | None, engines: str, out_dir: Path | None,
             choose: bool | None, language_model: Path | None) -> None:
    """Offline evaluation on MovieLens; writes evaluation.md, JSON, plots and ranking.json.

    The full run (no --quick, no --out) also writes the chosen configuration to the shipped
    plugin/ranking.json: the defaults of /search, the proxy and the workers."""
    from plugin.config import REPO_ROOT, SHIPPED_RANKING
    from plugin.evaluation.run import run

    out = out_dir or (REPO_ROOT / ("bench/results/eval-quick" if quick else "docs"))
    shipped = SHIPPED_RANKING if not quick and out_dir is None else None
    run(quick, users, engines.split(","), out, progress=click.echo, ranking_out=shipped,
        choose=choose, language_model=language_model)
    click.echo(f"written: {out / 'evaluation.md'}"
               + (f" and {shipped}" if shipped else f"; chosen: {out / 'ranking.json'}"))


@main.command("eval-api")
@click.option("--engine", type=click.Choice(list(LOCAL_ENGINE_URLS)), default="elasticsearch",
              show_default=True, help="the engine of `make up` to build the deployment on")
@click.option("--users", type=click.IntRange(min=1), default=150, show_default=True,
              help="users whose latest likes are held out and searched for")
@click.option("--held-out", type=click.IntRange(min=1), default=2, show_default=True,
              help="how many of each such user's latest likes")
@click.option("--seed", type=int, default=11, show_default=True, help="the users' sample")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              default=None, help="default: docs/ (api_check.md and .json)")
def evaluate_api(engine: str, users: int, held_out: int, seed: int,
                 out_dir: Path | None) -> None:
    """The product end to end: a MovieLens deployment of its own, held-out likes searched
    for through the HTTP API with and without the user (configured settings)."""
    from plugin.config import REPO_ROOT
    from plugin.evaluation import api_check

    result = api_check.run(engine, users, held_out, seed, echo=click.echo)
    path = api_check.write(result, out_dir or REPO_ROOT / "docs")
    click.echo(api_check.report(result))
    click.echo(f"written: {path}")


@main.command()
@click.option("--out", "out_path", type=click.Path(path_type=Path, dir_okay=False),
              default=Path("ranking.tuned.json"), show_default=True,
              help="the ranking file to write; point ES_INTEREST_RANKING_FILE at it to adopt it")
@click.option("--holdout", default=0.1, show_default=True,
              help="share of the log's time held out for queries")
@click.option("--queries", "max_queries", default=600, show_default=True,
              help="held-out queries at most (half fit, half check)")
def tune(out_path: Path, holdout: float, max_queries: int) -> None:
    """Fit blend weights and half-lives to this deployment's own event log; report the gain."""
    from plugin.evaluation import tune as tuning
    from plugin.services import Services

    try:
        result = tuning.tune(Services(), holdout, max_queries, progress=click.echo)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    tuning.write(result, out_path)
    click.echo(json.dumps(result["report"], indent=2))
    click.echo(f"written: {out_path} (adopt it with ES_INTEREST_RANKING_FILE={out_path})")


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
