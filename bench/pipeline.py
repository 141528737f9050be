"""Pipeline benchmark (`make bench`): documents, events, freshness, worker memory.

Everything runs in one session on this machine, through the real queue and a real worker
process, and each figure is reported next to its baseline or goal:

- document throughput end to end (task queued -> embedded -> indexed -> searchable) against
  raw ``encode`` of the same texts in this process (goal: ratio >= 0.85);
- sustained event throughput with 10,000 users (goal: median of five runs >= 5,000 events/s,
  none below 4,000), with the CPU each party (events workers, engine, Redis) spent per event,
  and the users read, written and refused; each run alternates the shipped deployment (one
  owner process per range of partitions) with the baseline (one prefork pool consuming every
  partition, as before partitions), so both are measured in the same session;
- freshness at a paced 1,000 events/s: from a task accepted by the broker to the user's vector
  readable by the search layer, p50 and p99 (goal: p99 <= 250 ms), with the engine's refreshes,
  flushes and merges of each index meanwhile (what a slow probe may have waited for);
- the workers' resident memory, the largest process and all (goal: <= 600 MiB a process).
"""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from dataclasses import replace
from typing import Any, ClassVar

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
from plugin.celery_app import make_celery, send_events
from plugin.indices import setup_indices
from plugin.movielens import movie_documents
from plugin.pipeline import behaviour, popularity
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


def bench_event_throughput(services: Services, celery: Any, worker_pids: list[int],
                           doc_ids: list[str], users: int, count: int, batch: int,
                           seed: int) -> dict[str, Any]:
    """Events queued as fast as the workers take them; with the CPU each party used per
    event (the events workers' processes, the engine's nodes, Redis), whose sum is what one
    core-second buys."""
    rng = random.Random(seed)
    user_ids = [f"user-{i}" for i in range(users)]
    events = make_events(rng, doc_ids, user_ids, count, time.time() - 86400)
    redis_pid = int(services.redis.info("server")["process_id"])

    def cpu() -> tuple[float, float, float]:
        return (sum(process_tree_cpu_s(p) for p in worker_pids),
                engine_cpu_s(services.engine.client), process_tree_cpu_s(redis_pid))

    cpu_before = cpu()
    started = time.perf_counter()
    results = [r for _, r in send_events(celery, events, batch)]
    applied, user_counts = 0, {"read": 0, "written": 0, "refused": 0}
    with progress(total=count, desc="events, sustained", unit="event") as bar:
        for result in results:
            report = result.get(timeout=1800)
            applied += len(report["done"])
            for key in user_counts:
                user_counts[key] += report["users"][key]
            bar.update(len(report["done"]) + len(report["errors"]) + len(report["duplicates"]))
    elapsed = time.perf_counter() - started
    worker_s, engine_s, redis_s = (after - before for after, before in zip(
        cpu(), cpu_before, strict=True))
    per_event = {name: round(seconds * 1000 / max(applied, 1), 3) for name, seconds in
                 (("worker", worker_s), ("engine", engine_s), ("redis", redis_s))}
    total_ms = sum(per_event.values())
    return {"events": count, "applied": applied, "users": users, "batch": batch,
            "events_per_s": round(applied / elapsed, 1), "user_documents": user_counts,
            "cpu_ms_per_event": {**per_event, "total": round(total_ms, 3)},
            "events_per_core_s": round(1000 / total_ms, 1) if total_ms > 0 else None}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and range of a deployment's runs (this machine drifts between them)."""
    rates = [r["events_per_s"] for r in runs]
    cpu = [r["cpu_ms_per_event"]["total"] for r in runs]
    return {"runs": runs, "events_per_s_median": round(float(np.median(rates)), 1),
            "events_per_s_min": min(rates), "events_per_s_max": max(rates),
            "cpu_ms_per_event_median": round(float(np.median(cpu)), 3),
            "refused_user_writes": sum(r["user_documents"]["refused"] for r in runs),
            "users_read": sum(r["user_documents"]["read"] for r in runs)}


def wait_for_merges(services: Services, timeout_s: float = 300.0) -> float:
    """Seconds until the engine runs no segment merge (at most ``timeout_s``)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        stats = services.engine.client.nodes.stats(metric="indices", index_metric="merge")
        if not any(node["indices"]["merges"]["current"] for node in stats["nodes"].values()):
            break
        time.sleep(0.5)
    return round(time.perf_counter() - started, 1)


def bench_popularity_flush(services: Services, doc_ids: list[str]) -> dict[str, Any]:
    """What coalescing saves: writing every document's popularity once (a partial update,
    which re-indexes the document with its vectors), against the events that changed them."""
    popularity.mark_dirty(services, doc_ids)
    started = time.perf_counter()
    written = popularity.flush(services, max_docs=0, tolerance=0.0)
    elapsed = time.perf_counter() - started
    return {"documents": written, "seconds": round(elapsed, 2),
            "docs_per_s": round(written / elapsed, 1) if elapsed > 0 else None}


# How often freshness probes are looked for: each look is a request the engine answers on the
# same two cores, so looking every 5 ms took CPU from the workers being measured; 25 ms is
# the figures' resolution.
POLL_S = 0.025


class EngineWatch:
    """The engine's refreshes, flushes and merges of each index during a run, from its
    cumulative statistics sampled every ``every_s``. A refresh of an index whose documents
    are rewritten in place (the users') is one long pause, and a probe that waits for it is a
    slow probe; a merge takes one of the cores the owners share."""

    KINDS: ClassVar[dict[str, str]] = {"refresh": "refresh", "flush": "flush",
                                       "merge": "merges"}  # metric: its key

    def __init__(self, services: Services, every_s: float = 0.25) -> None:
        settings = services.settings
        self._client = services.engine.client
        self._indices = {"documents": settings.docs_alias, "events": settings.events_alias,
                         "users": settings.interests_alias}
        self._every_s = every_s
        self._stop = threading.Event()
        self._samples: list[tuple[float, dict[tuple[str, str], tuple[int, int]]]] = []
        self._failed: Exception | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> dict[tuple[str, str], tuple[int, int]]:
        out = {}
        for name, index in self._indices.items():
            stats = self._client.indices.stats(index=index, metric=",".join(self.KINDS))
            for kind, key in self.KINDS.items():
                done = stats["_all"]["primaries"][key]
                out[name, kind] = int(done["total"]), int(done["total_time_in_millis"])
        return out

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._samples.append((time.perf_counter(), self._sample()))
                self._stop.wait(self._every_s)
        except Exception as exc:  # the summary says so; the run's other figures stand
            self._failed = exc

    def start(self) -> EngineWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self, since: float) -> dict[str, Any]:
        """Per index and kind, from ``since`` (a ``perf_counter`` time) on: how many ended,
        their summed time, and the most time one sample interval added, with when that
        interval ended (s after ``since``); ``failed``: why sampling stopped early."""
        kept = [(at, sample) for at, sample in self._samples if at >= since]
        out: dict[str, Any] = {} if self._failed is None else {"failed": repr(self._failed)}
        for key in kept[0][1] if kept else {}:
            steps = [(round(at - since, 2), after[key][1] - before[key][1])
                     for (_, before), (at, after) in itertools.pairwise(kept)]
            longest = max(steps, key=lambda step: step[1], default=(0.0, 0))
            out[" ".join(key)] = {"count": kept[-1][1][key][0] - kept[0][1][key][0],
                                  "ms": sum(ms for _, ms in steps),
                                  "longest_ms": longest[1], "longest_at_s": longest[0]}
        return out


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
            time.sleep(POLL_S)

    stop_time = [0.0]
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    watch = EngineWatch(services).start()
    sent, next_at, started = 0, time.perf_counter(), time.perf_counter()
    with progress(total=int(rate * (warmup_s + seconds)), desc=f"freshness at {rate} events/s",
              unit="event") as bar:
        while time.perf_counter() - started < warmup_s + seconds:
            probe = f"probe-{uuid.uuid4().hex[:10]}"
            events = make_events(rng, doc_ids, background, batch - 1, time.time())
            events.append({"event_id": uuid.uuid4().hex, "user_id": probe,
                           "doc_id": rng.choice(doc_ids), "type": "like"})
            send_events(celery, events, batch)
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
    watch.stop()
    latencies = np.array(sorted(seen.values())) * 1000
    # When the slowest probes were sent (seconds into the measured part): a stall shows as
    # neighbours, a saturated worker as a spread.
    slowest = sorted(seen, key=lambda p: -seen[p])[:5]
    first = min(probes.values(), default=0.0)
    return {"slowest": [[round(probes[p] - first, 2), round(seen[p] * 1000, 1)] for p in slowest],
            "rate_events_per_s": rate, "seconds": seconds, "events": sent,
            "probes": len(probes), "probes_visible": len(seen),
            "achieved_rate": round(sent / (stop_time[0] - started), 1), "warmup_s": warmup_s,
            "p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "p99_ms": round(float(np.percentile(latencies, 99)), 1),
            "max_ms": round(float(latencies.max()), 1), "goal_p99_ms": 250,
            "engine": watch.summary(since=first)}


def _engine_work(engine: dict[str, Any]) -> str:
    """``EngineWatch.summary``'s kinds of work that took over 100 ms in one sample."""
    busy = ", ".join(
        f"{name} {e['longest_ms']} ms at {e['longest_at_s']} s ({e['count']}: {e['ms']} ms)"
        for name, e in engine.items() if name != "failed" and e["longest_ms"] > 100)
    failed = f" (sampling failed: {engine['failed']})" if "failed" in engine else ""
    return (busy or "none") + failed


def table(results: dict[str, Any]) -> str:
    d, f, m = (results[k] for k in ("documents", "freshness", "worker"))
    owners, shared = results["events"]["owners"], results["events"]["shared"]

    def rate(e: dict[str, Any]) -> str:
        return (f"{e['events_per_s_median']} events/s (median of {len(e['runs'])}; "
                f"{e['events_per_s_min']} to {e['events_per_s_max']})")

    def cpu(e: dict[str, Any]) -> str:
        best = min(e["runs"], key=lambda r: abs(r["events_per_s"] - e["events_per_s_median"]))
        c = best["cpu_ms_per_event"]
        return (" + ".join(f"{c[k]}" for k in ("worker", "engine", "redis"))
                + f" = {c['total']} ms")

    events = results["events"]
    rows = [
        ("document throughput, raw `model.encode` (baseline)",
         f"{d['raw_encode_docs_per_s']} docs/s", ""),
        ("document throughput, end to end", f"{d['end_to_end_docs_per_s']} docs/s",
         f"ratio {d['ratio_to_raw']} (goal >= {d['goal_ratio']})"),
        (f"events, {events['users']} users, one owner per partition "
         f"({events['partitions']} partitions: {owners['deployment']})", rate(owners),
         f"goal: median >= {events['goal_median']}, none below {events['goal_min']}; "
         f"{round(owners['events_per_s_median'] / shared['events_per_s_median'], 2)}x "
         "the baseline"),
        (f"events, baseline: every partition shared ({shared['deployment']})", rate(shared),
         ""),
        ("refused user writes / users read from the engine, owners",
         f"{owners['refused_user_writes']} / {owners['users_read']}",
         f"goal: 0 refused; baseline {shared['refused_user_writes']} / {shared['users_read']}"),
        ("CPU per event, owners (median run): worker + engine + Redis", cpu(owners),
         f"baseline {cpu(shared)}"),
        ("behaviour training and re-fold of every user, before the measured runs",
         f"{owners['training']['seconds']} s", f"{owners['training']['users_refolded']} users, "
         f"{owners['training']['documents']} documents; automatic, then at most hourly"),
        ("popularity flush (partial updates, vectors re-indexed)",
         f"{results['popularity']['docs_per_s']} docs/s",
         f"{results['popularity']['documents']} documents; workers flush each changed "
         "document once per ES_INTEREST_POPULARITY_FLUSH_S, whatever its event rate"),
        (f"freshness at {f['rate_events_per_s']} events/s, p50", f"{f['p50_ms']} ms",
         f"after {f['merges_waited_s']} s waiting for the engine's merges, and "
         f"{f['warmup_s']} s of the same load unmeasured"),
        (f"freshness at {f['rate_events_per_s']} events/s, p99", f"{f['p99_ms']} ms",
         f"goal <= {f['goal_p99_ms']} ms; slowest probes (sent at s, ms): "
         + ", ".join(f"{at} s: {ms}" for at, ms in f["slowest"])
         + "; the engine's work over 100 ms meanwhile (the most in one 250 ms sample, when "
         "it ended; all of that kind): " + _engine_work(f["engine"])),
        ("worker RSS, peak: documents worker, largest process / all",
         f"{m['documents_peak_process_rss_mb']:.0f} / {m['documents_peak_rss_mb']:.0f} MiB",
         f"goal <= {m['goal_process_rss_mb']} MiB per process; {m['documents_worker']}"),
        ("worker RSS, peak: events owners, largest process / all",
         f"{m['events_peak_process_rss_mb']:.0f} / {m['events_peak_rss_mb']:.0f} MiB",
         f"goal <= {m['goal_process_rss_mb']} MiB per process"),
    ]
    lines = ["| measure | value | against |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def events_deployments(partitions: int) -> dict[str, list[list[str]]]:
    """The shipped deployment (an owner process per half of the partitions, one per core;
    its threads pool folds its partitions side by side) and the baseline (one prefork pool
    of 2 consuming every partition)."""
    half = max(1, partitions // 2)

    def span(low: int, high: int) -> str:
        return str(low) if low == high else f"{low}-{high}"

    ranges = [span(0, half - 1)] + ([span(half, partitions - 1)] if half < partitions else [])
    return {"owners": [["--partitions", r] for r in ranges],
            "shared": [["--queues=events", "--pool=prefork", "-c", "2"]]}


def start_events_workers(settings: Any, celery: Any, args: list[list[str]],
                         ) -> list[Any]:
    from plugin.partitions import parse_spec, queue_name

    workers = [start_worker(settings, a, ROOT / ".devstack" / f"bench-events-{i}.log")
               for i, a in enumerate(args)]
    for a in args:  # each answers on the first queue it consumes
        spec = a[a.index("--partitions") + 1] if "--partitions" in a else "0"
        wait_for_worker(celery, queue=queue_name(parse_spec(spec, settings.event_partitions)[0]),
                        load_model=False)
    return workers


def fresh_event_indices(services: Services) -> None:
    """No events, no users, an empty broker: a deployment's start (the documents stay)."""
    settings = services.settings
    for alias in (settings.events_alias, settings.interests_alias):
        services.engine.delete_indices(f"{alias}-*")
    services.redis.flushdb()
    setup_indices(services.engine, settings, services.embedder.dims)


def stop(workers: list[Any]) -> None:
    for w in workers:
        w.terminate()
    for w in workers:
        w.wait(timeout=60)


@click.command()
@click.option("--docs", default=9742, show_default=True, help="MovieLens movies to index")
@click.option("--events", "event_count", default=60000, show_default=True,
              help="events per measured run")
@click.option("--users", default=10000, show_default=True)
@click.option("--runs", default=5, show_default=True,
              help="measured event runs per deployment (after one unmeasured warm-up)")
@click.option("--rate", default=1000, show_default=True, help="paced events/s for freshness")
@click.option("--seconds", default=20.0, show_default=True, help="freshness run length")
def main(docs: int, event_count: int, users: int, runs: int, rate: int,
         seconds: float) -> None:
    """Measure the ingestion pipeline; writes bench/results/pipeline.{json,md}.

    Runs the deployment the README recommends: a documents worker (threads pool, one model)
    and one events owner per core (`--partitions`, half of the partitions each), real
    processes on the real broker; the event runs are repeated with the baseline deployment.
    """
    # The workers never start a behaviour training on their own here: each deployment's one
    # training runs at a known point, before the measured runs, instead of in one of them.
    settings = replace(isolated_settings("pipeline"), behaviour_first_training_events=10**9)
    services = Services(settings)
    services.redis.flushdb()
    setup_indices(services.engine, settings, services.embedder.dims)
    celery = make_celery(settings)
    documents_args = ["--queues=documents,celery", "--pool=threads", "-c", "2",
                      "--prefetch-multiplier=4"]
    documents_worker = start_worker(settings, documents_args,
                                    ROOT / ".devstack" / "bench-documents.log")
    samplers = {"documents": RssSampler(documents_worker.pid)}
    events_workers: list[Any] = []
    deployments = events_deployments(settings.event_partitions)
    try:
        wait_for_worker(celery, queue="documents")  # only the documents worker loads the model
        samplers["documents"].start()
        movies = movie_documents(limit=docs)
        engine = f"{services.engine.kind.value} {services.engine.version}"
        results: dict[str, Any] = {"engine": engine, "machine": machine(),
                                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        results["documents"] = bench_documents(services, celery, movies, batch=512)
        # Let the engine finish merging the new documents' segments (HNSW graphs), so the
        # event figures measure events, not the tail of the bulk load.
        started = time.perf_counter()
        services.engine.force_merge(settings.docs_alias)
        results["documents"]["merge_after_s"] = round(time.perf_counter() - started, 1)
        doc_ids = [m["id"] for m in movies]
        results["events"] = {"users": users, "partitions": settings.event_partitions,
                             "goal_median": 5000, "goal_min": 4000}
        # Each deployment from the same start (no users, no events, the same streams), so
        # neither measures the other's history; the baseline first.
        for kind in ("shared", "owners"):
            fresh_event_indices(services)
            events_workers = start_events_workers(settings, celery, deployments[kind])
            pids = [w.pid for w in events_workers]
            if kind == "owners":
                samplers["events"] = RssSampler(*pids)
                samplers["events"].start()
            # Unmeasured: a history, a behaviour training (automatic in service once 1,000
            # events are applied, then at most hourly; here at a known point), then a warm-up
            # in which the owners load their users once (then they hold them).
            bench_event_throughput(services, celery, pids, doc_ids, users, 2 * users, 1000,
                                   seed=100)
            started = time.perf_counter()
            trained = behaviour.train(services)
            training = {"seconds": round(time.perf_counter() - started, 1),
                        **{k: trained.get(k) for k in ("documents", "users_refolded")}}
            bench_event_throughput(services, celery, pids, doc_ids, users, 2 * users, 1000,
                                   seed=101)
            measured = [bench_event_throughput(services, celery, pids, doc_ids, users,
                                               event_count, 1000, seed=run + 1)
                        for run in range(runs)]
            results["events"][kind] = {
                **summarize(measured), "training": training,
                "deployment": " and ".join(f"`es-interest worker {' '.join(a)}`"
                                           for a in deployments[kind])}
            if kind == "owners":
                # Freshness is the steady state at a paced rate: it starts once the engine
                # has merged what the saturating runs wrote, and before the full popularity
                # flush re-indexes every document (whose merges ran into it before).
                merging_s = wait_for_merges(services)
                results["freshness"] = {**bench_freshness(services, celery, doc_ids, rate,
                                                          seconds, 50),
                                        "merges_waited_s": merging_s}
                results["popularity"] = bench_popularity_flush(services, doc_ids)
            else:
                stop(events_workers)
                events_workers = []
        results["worker"] = {
            **{f"{n}_peak_rss_mb": round(s.peak, 1) for n, s in samplers.items()},
            **{f"{n}_peak_process_rss_mb": round(s.peak_process, 1)
               for n, s in samplers.items()}, "goal_process_rss_mb": 600,
            "documents_worker": " ".join(documents_args)}
    finally:
        for sampler in samplers.values():
            sampler.stop_flag.set()
        stop([documents_worker, *events_workers])
        services.engine.delete_indices(f"{settings.index_prefix}-*")
        services.redis.flushdb()
    json_path, md_path = write_results("pipeline", results, table(results))
    click.echo(md_path.read_text())
    click.echo(f"written: {json_path}, {md_path}")


if __name__ == "__main__":
    main()
