"""Pipeline benchmark (`make bench`): documents, events, freshness, worker memory.

Everything runs in one session on this machine, through the real queue and a real worker
process, and each figure is reported next to its baseline or goal:

- document throughput end to end (task queued -> embedded -> indexed -> searchable) against
  raw ``encode`` of the same texts in this process (goal: ratio >= 0.85);
- sustained event throughput with 10,000 users (goal: >= 3,000 events/s), with the CPU each
  party (events worker, engine, Redis) spent per event;
- freshness at a paced 500 events/s: from a task accepted by the broker to the user's vector
  readable by the search layer, p50 and p99 (goal: p99 <= 500 ms);
- the workers' resident memory, the largest process and all (goal: <= 600 MiB a process).
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import Any

import click
import numpy as np

from bench.common import (
    ROOT,
    RssSampler,
    engine_cpu_s,
    isolated_settings,
    machine,
    process_tree_cpu_s,
    start_worker,
    wait_for_worker,
    write_results,
)
from plugin.celery_app import make_celery
from plugin.indices import setup_indices
from plugin.movielens import movie_documents
from plugin.pipeline import popularity
from plugin.progress import progress
from plugin.services import Services


def bench_documents(services: Services, celery: Any, docs: list[dict[str, Any]],
                    batch: int) -> dict[str, Any]:
    texts = [f"{d['title']} | {', '.join(d['tags'])}" for d in docs]
    payload = [{"id": d["id"], "title": d["title"], "tags": d["tags"]} for d in docs]
    embedder = services.embedder
    embedder.encode(texts[:64])  # warm up
    started = time.perf_counter()
    embedder.encode(texts)
    raw_s = time.perf_counter() - started

    started = time.perf_counter()
    results = [celery.send_task("es_interest.index_documents", args=[payload[i:i + batch]])
               for i in range(0, len(payload), batch)]
    done = 0
    with progress(total=len(payload), desc="documents end to end", unit="doc") as bar:
        for result in results:
            report = result.get(timeout=1800)
            done += len(report["done"])
            bar.update(len(report["done"]) + len(report["errors"]))
    services.engine.refresh(services.settings.docs_alias)
    searchable = services.engine.count(services.settings.docs_alias)
    e2e_s = time.perf_counter() - started
    raw_rate, e2e_rate = len(texts) / raw_s, searchable / e2e_s
    return {"documents": len(texts), "indexed": done, "searchable": searchable,
            "raw_encode_docs_per_s": round(raw_rate, 1),
            "end_to_end_docs_per_s": round(e2e_rate, 1),
            "ratio_to_raw": round(e2e_rate / raw_rate, 3), "goal_ratio": 0.85, "batch": batch}


def make_events(rng: random.Random, doc_ids: list[str], users: list[str], count: int,
                start: float) -> list[dict[str, Any]]:
    types = ["view", "click", "like", "favorite", "purchase", "dislike", "skip"]
    return [{"event_id": uuid.uuid4().hex, "user_id": rng.choice(users),
             "doc_id": rng.choice(doc_ids), "type": rng.choice(types),
             "timestamp": start + i * 0.001} for i in range(count)]


def bench_event_throughput(services: Services, celery: Any, worker_pid: int,
                           doc_ids: list[str], users: int, count: int,
                           batch: int) -> dict[str, Any]:
    """Events queued as fast as the worker takes them; with the CPU each party used per
    event (the events worker's processes, the engine's nodes, Redis), whose sum is what one
    core-second buys."""
    rng = random.Random(1)
    user_ids = [f"user-{i}" for i in range(users)]
    events = make_events(rng, doc_ids, user_ids, count, time.time() - 86400)
    redis_pid = int(services.redis.info("server")["process_id"])
    cpu_before = (process_tree_cpu_s(worker_pid), engine_cpu_s(services.engine.client),
                  process_tree_cpu_s(redis_pid))
    started = time.perf_counter()
    results = [celery.send_task("es_interest.ingest_events", args=[events[i:i + batch]])
               for i in range(0, count, batch)]
    applied = 0
    with progress(total=count, desc="events, sustained", unit="event") as bar:
        for result in results:
            report = result.get(timeout=1800)
            applied += len(report["done"])
            bar.update(len(report["done"]) + len(report["errors"]) + len(report["duplicates"]))
    elapsed = time.perf_counter() - started
    worker_s, engine_s, redis_s = (after - before for after, before in zip(
        (process_tree_cpu_s(worker_pid), engine_cpu_s(services.engine.client),
         process_tree_cpu_s(redis_pid)), cpu_before, strict=True))
    per_event = {name: round(seconds * 1000 / max(applied, 1), 3) for name, seconds in
                 (("worker", worker_s), ("engine", engine_s), ("redis", redis_s))}
    total_ms = sum(per_event.values())
    return {"events": count, "applied": applied, "users": users, "batch": batch,
            "events_per_s": round(applied / elapsed, 1), "goal_events_per_s": 3000,
            "cpu_ms_per_event": {**per_event, "total": round(total_ms, 3)},
            "events_per_core_s": round(1000 / total_ms, 1) if total_ms > 0 else None}


def bench_popularity_flush(services: Services, doc_ids: list[str]) -> dict[str, Any]:
    """What coalescing saves: writing every document's popularity once (a partial update,
    which re-indexes the document with its vectors), against the events that changed them."""
    popularity.mark_dirty(services, doc_ids)
    started = time.perf_counter()
    written = popularity.flush(services, max_docs=0, tolerance=0.0)
    elapsed = time.perf_counter() - started
    return {"documents": written, "seconds": round(elapsed, 2),
            "docs_per_s": round(written / elapsed, 1) if elapsed > 0 else None}


def bench_freshness(services: Services, celery: Any, doc_ids: list[str], rate: int,
                    seconds: float, batch: int, warmup_s: float = 5.0) -> dict[str, Any]:
    """Paced load; each batch carries one event for a fresh probe user, polled until visible.

    The first ``warmup_s`` seconds run the same load unmeasured, so the figure is the steady
    state at this rate, not the tail of the previous (saturating) phase.
    """
    rng = random.Random(2)
    background = [f"user-{i}" for i in range(2000)]
    interval = batch / rate
    probes: dict[str, float] = {}
    seen: dict[str, float] = {}
    lock = threading.Lock()
    stop = threading.Event()
    alias = services.settings.interests_alias

    def poll() -> None:
        while not stop.is_set() or len(seen) < len(probes):
            with lock:
                waiting = [p for p in probes if p not in seen]
            if waiting:
                found = services.engine.mget_versioned(alias, waiting)
                now = time.perf_counter()
                with lock:
                    for probe in found:
                        seen[probe] = now - probes[probe]
            if stop.is_set() and time.perf_counter() - stop_time[0] > 30:
                return
            time.sleep(0.005)

    stop_time = [0.0]
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    sent, next_at, started = 0, time.perf_counter(), time.perf_counter()
    with progress(total=int(rate * (warmup_s + seconds)), desc=f"freshness at {rate} events/s",
              unit="event") as bar:
        while time.perf_counter() - started < warmup_s + seconds:
            probe = f"probe-{uuid.uuid4().hex[:10]}"
            events = make_events(rng, doc_ids, background, batch - 1, time.time())
            events.append({"event_id": uuid.uuid4().hex, "user_id": probe,
                           "doc_id": rng.choice(doc_ids), "type": "like"})
            celery.send_task("es_interest.ingest_events", args=[events])
            if time.perf_counter() - started >= warmup_s:
                with lock:
                    probes[probe] = time.perf_counter()  # accepted: the broker has the task
            sent += batch
            bar.update(batch)
            next_at += interval
            time.sleep(max(0.0, next_at - time.perf_counter()))
    stop_time[0] = time.perf_counter()
    stop.set()
    poller.join()
    latencies = np.array(sorted(seen.values())) * 1000
    return {"rate_events_per_s": rate, "seconds": seconds, "events": sent,
            "probes": len(probes), "probes_visible": len(seen),
            "achieved_rate": round(sent / (stop_time[0] - started), 1), "warmup_s": warmup_s,
            "p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "p99_ms": round(float(np.percentile(latencies, 99)), 1),
            "max_ms": round(float(latencies.max()), 1), "goal_p99_ms": 500}


def table(results: dict[str, Any]) -> str:
    d, e, f, m = (results[k] for k in ("documents", "events", "freshness", "worker"))
    rows = [
        ("document throughput, raw `model.encode` (baseline)",
         f"{d['raw_encode_docs_per_s']} docs/s", ""),
        ("document throughput, end to end", f"{d['end_to_end_docs_per_s']} docs/s",
         f"ratio {d['ratio_to_raw']} (goal >= {d['goal_ratio']})"),
        (f"event throughput, {e['users']} users", f"{e['events_per_s']} events/s",
         f"goal >= {e['goal_events_per_s']}"),
        ("CPU per event: worker + engine + Redis",
         " + ".join(f"{e['cpu_ms_per_event'][k]}" for k in ("worker", "engine", "redis"))
         + f" = {e['cpu_ms_per_event']['total']} ms",
         f"{e['events_per_core_s']} events per core-second"),
        ("popularity flush (partial updates, vectors re-indexed)",
         f"{results['popularity']['docs_per_s']} docs/s",
         f"{results['popularity']['documents']} documents; workers flush each changed "
         "document once per ES_INTEREST_POPULARITY_FLUSH_S, whatever its event rate"),
        (f"freshness at {f['rate_events_per_s']} events/s, p50", f"{f['p50_ms']} ms", ""),
        (f"freshness at {f['rate_events_per_s']} events/s, p99", f"{f['p99_ms']} ms",
         f"goal <= {f['goal_p99_ms']} ms"),
        ("worker RSS, peak: documents worker, largest process / all",
         f"{m['documents_peak_process_rss_mb']:.0f} / {m['documents_peak_rss_mb']:.0f} MiB",
         f"goal <= {m['goal_process_rss_mb']} MiB per process; {m['documents_worker']}"),
        ("worker RSS, peak: events worker, largest process / all",
         f"{m['events_peak_process_rss_mb']:.0f} / {m['events_peak_rss_mb']:.0f} MiB",
         f"goal <= {m['goal_process_rss_mb']} MiB per process; {m['events_worker']}"),
    ]
    lines = ["| measure | value | against |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--docs", default=9742, show_default=True, help="MovieLens movies to index")
@click.option("--events", "event_count", default=60000, show_default=True)
@click.option("--users", default=10000, show_default=True)
@click.option("--rate", default=500, show_default=True, help="paced events/s for freshness")
@click.option("--seconds", default=20.0, show_default=True, help="freshness run length")
def main(docs: int, event_count: int, users: int, rate: int, seconds: float) -> None:
    """Measure the ingestion pipeline; writes bench/results/pipeline.{json,md}.

    Runs the deployment the README recommends: a documents worker (threads pool, one model)
    and an events worker (prefork pool of 2), each a real process on the real broker.
    """
    settings = isolated_settings("pipeline")
    services = Services(settings)
    services.redis.flushdb()
    setup_indices(services.engine, settings, services.embedder.dims)
    celery = make_celery(settings)
    worker_args = {"documents": ["--queues=documents,celery", "--pool=threads", "-c", "2",
                                 "--prefetch-multiplier=4"],
                   "events": ["--queues=events,celery", "--pool=prefork", "-c", "2"]}
    workers = {name: start_worker(settings, args, ROOT / ".devstack" / f"bench-{name}.log")
               for name, args in worker_args.items()}
    samplers = {name: RssSampler(w.pid) for name, w in workers.items()}
    try:
        # Each worker answers on its own queue; only the documents worker loads the model.
        wait_for_worker(celery, queue="documents")
        wait_for_worker(celery, queue="events", load_model=False)
        for sampler in samplers.values():
            sampler.start()
        movies = movie_documents(limit=docs)
        engine = f"{services.engine.kind.value} {services.engine.version}"
        results: dict[str, Any] = {"engine": engine, "machine": machine(),
                                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        results["documents"] = bench_documents(services, celery, movies, batch=512)
        # Let the engine finish merging the new documents' segments (HNSW graphs), so the
        # event figures measure events, not the tail of the bulk load.
        started = time.perf_counter()
        services.engine.client.options(request_timeout=600).indices.forcemerge(
            index=settings.docs_alias, max_num_segments=1)
        results["documents"]["merge_after_s"] = round(time.perf_counter() - started, 1)
        doc_ids = [m["id"] for m in movies]
        results["events"] = bench_event_throughput(services, celery, workers["events"].pid,
                                                   doc_ids, users, event_count, 1000)
        results["popularity"] = bench_popularity_flush(services, doc_ids)
        results["freshness"] = bench_freshness(services, celery, doc_ids, rate, seconds, 50)
        results["worker"] = {
            **{f"{n}_peak_rss_mb": round(s.peak, 1) for n, s in samplers.items()},
            **{f"{n}_peak_process_rss_mb": round(s.peak_process, 1)
               for n, s in samplers.items()}, "goal_process_rss_mb": 600,
            **{f"{n}_worker": " ".join(a) for n, a in worker_args.items()}}
    finally:
        for sampler in samplers.values():
            sampler.stop_flag.set()
        for w in workers.values():
            w.terminate()
            w.wait(timeout=60)
        services.engine.delete_indices(f"{settings.index_prefix}-*")
        services.redis.flushdb()
    json_path, md_path = write_results("pipeline", results, table(results))
    click.echo(md_path.read_text())
    click.echo(f"written: {json_path}, {md_path}")


if __name__ == "__main__":
    main()
