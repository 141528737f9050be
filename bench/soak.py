"""`make soak`: searches and events together against a real worker and the API, for a bounded
time on loopback, then the count that matters: events sent = stored = folded, and no 5xx.

    python -m bench.soak [--seconds 120] [--search-rate 20] [--event-rate 200]

Searches (personalized, over the query list) and event batches are paced in two threads
through the HTTP API under gunicorn; a real Celery worker folds the events. RSS of the API and
the worker is read at the start and the end. Results: bench/results/soak.json and soak.md.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import click
import requests

from bench.common import (
    QUERIES,
    ROOT,
    isolated_settings,
    machine,
    process_tree_rss_mb,
    start_api,
    start_worker,
    wait_for_worker,
    write_results,
)
from plugin import pipeline
from plugin.api.auth import create_key
from plugin.indices import setup_indices
from plugin.movielens import movie_documents
from plugin.services import Services


def _paced(rate: float, seconds: float, action: Any) -> None:
    """Calls ``action(i)`` ``rate`` times a second for ``seconds`` on a small thread pool."""
    interval, started = 1.0 / rate, time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        i = 0
        while time.monotonic() - started < seconds:
            pool.submit(action, i)
            i += 1
            time.sleep(max(0.0, started + i * interval - time.monotonic()))


def run(seconds: float, search_rate: float, event_rate: float, users: int,
        movies: int) -> dict[str, Any]:
    settings = isolated_settings("soak", redis_db=10)
    services = Services(settings)
    services.redis.flushdb()
    setup_indices(services.engine, settings, services.embedder.dims)
    docs = movie_documents(limit=movies)
    for i in range(0, len(docs), 500):
        pipeline.index_documents(services, docs[i:i + 500])
    services.engine.refresh(settings.docs_alias)
    doc_ids = [d["id"] for d in docs]
    key = create_key(services, "soak", ("read", "write"), "10000000/minute")
    worker = start_worker(settings, ["-Q", "documents,events,celery", "-c", "2"],
                          ROOT / ".devstack" / "soak-worker.log")
    api, url = start_api(settings)
    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    session = requests.Session()
    session.headers["Authorization"] = f"ApiKey {key}"
    sent: list[str] = []
    rng = random.Random(7)
    user_ids = [f"soak-{u}" for u in range(users)]
    batch = 20  # events per request

    def record(kind: str, status: int) -> None:
        with lock:
            statuses[f"{kind} {status // 100}xx"] += 1

    def search(i: int) -> None:
        answer = session.get(f"{url}/search", params={
            "q": QUERIES[i % len(QUERIES)], "user_id": user_ids[i % len(user_ids)]},
            timeout=30)
        record("search", answer.status_code)

    def events(i: int) -> None:
        now = time.time()
        chunk = [{"event_id": f"soak-{i}-{j}", "user_id": rng.choice(user_ids),
                  "doc_id": rng.choice(doc_ids), "type": rng.choice(["click", "like", "view"]),
                  "timestamp": now} for j in range(batch)]
        answer = session.post(f"{url}/events", json=chunk, timeout=30)
        record("events", answer.status_code)
        if answer.status_code == 202:
            with lock:
                sent.extend(e["event_id"] for e in chunk)

    try:
        wait_for_worker(services.celery)
        search(0)  # warm: the API loads the model on its first search
        rss_start = {"api_mib": process_tree_rss_mb(api.pid),
                     "worker_mib": process_tree_rss_mb(worker.pid)}
        threads = [threading.Thread(target=_paced, args=(search_rate, seconds, search)),
                   threading.Thread(target=_paced, args=(event_rate / batch, seconds, events))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rss_end = {"api_mib": process_tree_rss_mb(api.pid),
                   "worker_mib": process_tree_rss_mb(worker.pid)}
        # Every accepted event must reach the log and the vectors: wait for the queue to drain.
        deadline = time.monotonic() + 300
        while True:
            services.engine.refresh(settings.events_alias)
            stored = services.engine.count(settings.events_alias)
            if stored >= len(sent) or time.monotonic() > deadline:
                break
            time.sleep(2)
        services.engine.refresh(settings.interests_alias)
        folded = int(services.engine.search(settings.interests_alias, {
            "size": 0, "aggs": {"n": {"sum": {"field": "event_count"}}}})
            ["aggregations"]["n"]["value"])
    finally:
        api.terminate()
        worker.terminate()
        api.wait(timeout=30)
        worker.wait(timeout=60)
        services.engine.delete_indices(f"{settings.index_prefix}-*")
        services.redis.flushdb()
    fives = sum(n for k, n in statuses.items() if k.endswith("5xx"))
    return {"machine": machine(), "engine": f"{services.engine.kind.value} "
            f"{services.engine.version}", "seconds": seconds, "search_rate": search_rate,
            "event_rate": event_rate, "statuses": dict(statuses), "events_sent": len(sent),
            "events_stored": stored, "events_folded": folded,
            "events_lost": len(sent) - min(stored, folded), "responses_5xx": fives,
            "rss_start": rss_start, "rss_end": rss_end}


def table(r: dict[str, Any]) -> str:
    rows = [("engine", r["engine"]), ("duration", f"{r['seconds']:g} s"),
            ("searches / s (target)", f"{r['search_rate']:g}"),
            ("events / s (target)", f"{r['event_rate']:g}"),
            ("responses", ", ".join(f"{k}: {n}" for k, n in sorted(r["statuses"].items()))),
            ("5xx responses", str(r["responses_5xx"])),
            ("events sent / stored / folded", f"{r['events_sent']} / {r['events_stored']} / "
                                              f"{r['events_folded']}"),
            ("events lost", str(r["events_lost"])),
            ("API RSS start → end", f"{r['rss_start']['api_mib']:.0f} → "
                                    f"{r['rss_end']['api_mib']:.0f} MiB"),
            ("worker RSS start → end", f"{r['rss_start']['worker_mib']:.0f} → "
                                       f"{r['rss_end']['worker_mib']:.0f} MiB")]
    return "| measure | value |\n| --- | --- |\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)


@click.command()
@click.option("--seconds", default=120.0, show_default=True, help="how long to keep the load")
@click.option("--search-rate", default=20.0, show_default=True, help="searches per second")
@click.option("--event-rate", default=200.0, show_default=True, help="events per second")
@click.option("--users", default=500, show_default=True)
@click.option("--movies", default=2000, show_default=True)
def main(seconds: float, search_rate: float, event_rate: float, users: int,
         movies: int) -> None:
    """A bounded soak of searches and events together; fails on a lost event or a 5xx."""
    results = run(seconds, search_rate, event_rate, users, movies)
    md = table(results)
    paths = write_results("soak", results, md + "\n")
    click.echo(md)
    click.echo(f"written: {', '.join(str(p) for p in paths)}")
    if results["events_lost"] or results["responses_5xx"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
