"""Search latency benchmark (`make bench`): plain BM25 against the layer's paths, per engine.

For each engine of `make up`, one session: index MovieLens movies, give 50 users feedback,
serve the API with gunicorn, then measure p50/p99 at concurrency 1, 8 and 32 for
plain BM25 sent straight to the engine (the baseline), the non-personalized hybrid through the
layer, and the personalized blend with each strategy the engine runs, with and without the
query-embedding cache. Caches are warmed first where they are on. At concurrency 1 the
paths take turns request by request, so a drift over the run shifts them all alike. The
layer's blended request for the default strategy is also replayed straight to the engine
(what the layer adds is the difference), and on the first engine the gunicorn worker models
(processes x threads) are compared at concurrency 8 by requests/s against that replay, with
the API's memory.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import click
import numpy as np
import requests

from bench.common import (
    QUERIES,
    RssSampler,
    isolated_settings,
    machine,
    start_api,
    write_results,
)
from plugin import pipeline
from plugin.api.auth import create_key
from plugin.config import LOCAL_ENGINE_URLS
from plugin.indices import setup_indices
from plugin.movielens import movie_documents
from plugin.progress import progress
from plugin.search import (
    SearchParams,
    available_strategies,
    best_bm25_request,
    default_strategy,
    search,
    user_vectors,
)
from plugin.services import Services
from plugin.strategies import TEXT_FIELDS


def prepare(services: Services, movies: int, users: int) -> list[str]:
    docs = movie_documents(limit=movies)
    for i in progress(range(0, len(docs), 500), desc="indexing", unit="batch"):
        pipeline.index_documents(services, docs[i:i + 500])
    services.engine.refresh(services.settings.docs_alias)
    rng = random.Random(3)
    ids = [d["id"] for d in docs]
    user_ids = [f"bench-user-{u}" for u in range(users)]
    events = [{"user_id": u, "doc_id": rng.choice(ids), "type": "like",
               "timestamp": time.time() - rng.uniform(0, 86400 * 30)}
              for u in user_ids for _ in range(20)]
    pipeline.ingest_events(services, events)
    return user_ids


def _cell(latencies_ms: list[float], seconds: float) -> dict[str, float]:
    """p50/p99 of the requests' latencies, and their rate over ``seconds``."""
    array = np.array(latencies_ms)
    return {"p50_ms": round(float(np.percentile(array, 50)), 2),
            "p99_ms": round(float(np.percentile(array, 99)), 2), "requests": len(array),
            "requests_per_s": round(len(array) / seconds, 1)}


def _timed(call: Any, job: dict[str, Any]) -> float:
    started = time.perf_counter()
    call(job)
    return (time.perf_counter() - started) * 1000


def measure(call: Any, jobs: list[dict[str, Any]], concurrency: int) -> dict[str, float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(lambda job: _timed(call, job), jobs))
    return _cell(latencies, time.perf_counter() - started)


def measure_interleaved(calls: dict[str, Any], jobs: dict[str, list[dict[str, Any]]],
                        rng: random.Random) -> dict[str, dict[str, float]]:
    """Concurrency 1, every path's n-th request in one round, rounds in a shuffled order."""
    latencies: dict[str, list[float]] = {label: [] for label in calls}
    labels = list(calls)
    for n in range(min(len(j) for j in jobs.values())):
        rng.shuffle(labels)
        for label in labels:
            latencies[label].append(_timed(calls[label], jobs[label][n]))
    # Each path's own rate at concurrency 1: its requests over the time they took.
    return {label: _cell(values, sum(values) / 1000) for label, values in latencies.items()}


def bench_engine(name: str, url: str, movies: int, users: int, requests_per_cell: int,
                 concurrencies: list[int],
                 worker_models: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    settings = replace(isolated_settings(f"search-{name}"), engine_url=url)
    services = Services(settings)
    services.redis.flushdb()
    setup_indices(services.engine, settings, services.embedder.dims)
    user_ids = prepare(services, movies, users)
    key = create_key(services, "bench", ("read",), "1000000/minute")
    api, layer = start_api(settings)
    session = requests.Session()
    session.headers["Authorization"] = f"ApiKey {key}"
    try:
        strategies = available_strategies(services)
        rng = random.Random(4)
        plain_session = requests.Session()

        def plain(job: dict[str, Any]) -> None:
            body: dict[str, Any] = {"size": 10, "_source": {"excludes": ["embedding"]},
                    "query": {"multi_match": {"query": job["q"], "fields": TEXT_FIELDS}}}
            plain_session.post(f"{url}/{settings.docs_alias}/_search", json=body,
                               timeout=30).raise_for_status()

        def through_layer(params: dict[str, Any]) -> Any:
            def call(job: dict[str, Any]) -> None:
                answer = session.get(f"{layer}/search", params={**params, **job}, timeout=30)
                answer.raise_for_status()
            return call

        # The blended request the layer sends for each (query, user), sent straight to the
        # engine: what the layer's own work is measured against.
        default = default_strategy(services)
        bodies = {(q, u): search(services, SearchParams(q, user_id=u, strategy=default)).request
                  for q in QUERIES for u in user_ids}

        def blended(job: dict[str, Any]) -> None:
            plain_session.post(f"{url}/{settings.docs_alias}/_search",
                               json=bodies[job["q"], job["user_id"]],
                               timeout=30).raise_for_status()

        # The parts of an uncached personalized search, each on its own: the model's encode of
        # the query (the floor no layer goes under), the best-BM25 request (the strategies
        # that divide by it send it alongside the encode) and the user's cached vectors.
        query_model = Services(settings, serving=True).embedder  # as the API loads it

        def encode(job: dict[str, Any]) -> None:
            query_model.encode_one(job["q"])

        def best_bm25(job: dict[str, Any]) -> None:
            plain_session.post(f"{url}/{settings.docs_alias}/_search",
                               json=best_bm25_request(job["q"], {}),
                               timeout=30).raise_for_status()

        def cached_user(job: dict[str, Any]) -> None:
            user_vectors(services, job["user_id"])

        paths: dict[str, Any] = {"plain BM25, straight to the engine": (plain, False)}
        paths["part: the query's encode (the model)"] = (encode, False)
        paths["part: the best-BM25 request"] = (best_bm25, False)
        paths["part: the user's vectors from Redis"] = (cached_user, True)
        paths[f"personalized {default}: its engine request, straight to the engine"] = (
            blended, True)
        paths["hybrid, no user, through the layer"] = (
            through_layer({"strategy": "knn_linear"}), False)
        for strategy in strategies:
            for cache in (True, False):
                label = (f"personalized {strategy}, query cache "
                         f"{'warm' if cache else 'off'}")
                paths[label] = (through_layer({"strategy": strategy,
                                               "cache": "true" if cache else "false"}), True)
        # Warm the query and user caches (and the engine's) once.
        for q in QUERIES:
            for u in user_ids:
                through_layer({"strategy": "knn_linear"})({"q": q, "user_id": u})
                break
        for u in user_ids:
            through_layer({"strategy": "knn_linear"})({"q": QUERIES[0], "user_id": u})
        cells: dict[str, dict[str, Any]] = {label: {} for label in paths}
        for c in concurrencies:
            jobs = {label: [{"q": rng.choice(QUERIES), **({"user_id": rng.choice(user_ids)}
                                                           if personal else {})}
                            for _ in range(requests_per_cell)]
                    for label, (_, personal) in paths.items()}
            if c == 1:
                # One request of each path in turn (in a shuffled order): a drift of the
                # machine or the engine over the run shifts every path alike, so the
                # differences to the baseline hold.
                cells_at_1 = measure_interleaved(
                    {label: call for label, (call, _) in paths.items()}, jobs, rng)
                for label in paths:
                    cells[label]["1"] = cells_at_1[label]
                continue
            for label, (call, _) in paths.items():
                cells[label][str(c)] = measure(call, jobs[label], c)
        api.terminate()
        api.wait(timeout=30)
        models = {}
        if worker_models:
            for workers, threads in worker_models:
                api, layer = start_api(settings, workers, threads)
                memory = RssSampler(api.pid)
                memory.start()
                call = through_layer({"strategy": default})
                for q in QUERIES:  # each process warms its model
                    call({"q": q, "user_id": user_ids[0]})
                model_jobs = [{"q": rng.choice(QUERIES), "user_id": rng.choice(user_ids)}
                              for _ in range(requests_per_cell)]
                layer_cell = measure(call, model_jobs, 8)
                engine_cell = measure(blended, model_jobs, 8)  # the same requests, right after
                memory.stop_flag.set()
                models[f"{workers} x {threads}"] = {
                    "layer": layer_cell, "engine": engine_cell,
                    "rss_largest_process_mb": round(memory.peak_process, 1),
                    "ratio": round(layer_cell["requests_per_s"] / engine_cell["requests_per_s"],
                                   3)}
                api.terminate()
                api.wait(timeout=30)
        return {"engine": f"{services.engine.kind.value} {services.engine.version}",
                "documents": movies, "users": users, "cells": cells, "strategy": default,
                "worker_models": models}
    finally:
        if api.poll() is None:
            api.terminate()
            api.wait(timeout=30)
        services.engine.delete_indices(f"{settings.index_prefix}-*")
        services.redis.flushdb()


def floor_line(res: dict[str, Any]) -> str:
    """The default strategy's uncached search at c=1 against its floor: the engine's own
    request for it plus the model's encode of the query (the parts the layer cannot skip)."""
    cells, strategy = res["cells"], res["strategy"]

    def p50(label: str) -> float:
        return float(cells[label]["1"]["p50_ms"])

    plain = p50("plain BM25, straight to the engine")
    engine = p50(f"personalized {strategy}: its engine request, straight to the engine")
    floor = engine + p50("part: the query's encode (the model)")
    layer = p50(f"personalized {strategy}, query cache off")
    warm = p50(f"personalized {strategy}, query cache warm")
    return (f"Default strategy {strategy} at c=1, p50 over plain BM25: uncached "
            f"+{layer - plain:.1f} ms (goal <= 8), warm caches +{warm - plain:.1f} ms "
            "(goal <= 5). Its floor "
            f"(the engine's request for it, +{engine - plain:.1f}, and the query's encode) is "
            f"+{floor - plain:.1f} ms; the layer's uncached search is {layer - floor:+.1f} ms "
            "from it.")


def table(results: dict[str, Any], concurrencies: list[int]) -> str:
    lines = []
    for name, res in results["engines"].items():
        lines += [f"\n### {res['engine']}\n",
                  "| path | " + " | ".join(f"c={c} p50 / p99 (ms)" for c in concurrencies)
                  + " | added at c=1 (p50 / p99) |",
                  "| --- |" + " --- |" * (len(concurrencies) + 1)]
        base = res["cells"]["plain BM25, straight to the engine"]["1"]
        for label, cells in res["cells"].items():
            row = [f"{cells[str(c)]['p50_ms']} / {cells[str(c)]['p99_ms']}"
                   for c in concurrencies]
            added = ("(a part)" if label.startswith("part:") else
                     f"+{cells['1']['p50_ms'] - base['p50_ms']:.1f} / "
                     f"+{cells['1']['p99_ms'] - base['p99_ms']:.1f}")
            lines.append(f"| {label} | " + " | ".join(row) + f" | {added} |")
        lines.append("\n" + floor_line(res))
        if res.get("worker_models"):
            lines += [f"\nLayer throughput at concurrency 8, personalized {res['strategy']} "
                      "(warm caches), by gunicorn worker model, against the same engine "
                      "requests sent straight to the engine right after (goal: ratio >= 0.5):\n",
                      "| gunicorn workers x threads | layer requests/s (p50 ms) | engine "
                      "requests/s (p50 ms) | ratio | RSS, largest API process |",
                      "| --- | --- | --- | --- | --- |"]
            for model, m in res["worker_models"].items():
                lines.append(f"| {model} | {m['layer']['requests_per_s']} "
                             f"({m['layer']['p50_ms']}) | {m['engine']['requests_per_s']} "
                             f"({m['engine']['p50_ms']}) | {m['ratio']} | "
                             f"{m['rss_largest_process_mb']:.0f} MiB |")
        del name
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--engines", default=",".join(LOCAL_ENGINE_URLS), show_default=True)
@click.option("--movies", default=3000, show_default=True)
@click.option("--users", default=50, show_default=True)
@click.option("--requests", "requests_per_cell", default=300, show_default=True,
              help="requests per (path, concurrency) cell")
@click.option("--worker-models", default="1x16,2x8,4x4", show_default=True,
              help="gunicorn workers x threads to compare at concurrency 8 ('' to skip)")
def main(engines: str, movies: int, users: int, requests_per_cell: int,
         worker_models: str) -> None:
    """Measure search latency; writes bench/results/search.{json,md}."""
    concurrencies = [1, 8, 32]
    results: dict[str, Any] = {"machine": machine(), "engines": {},
                               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "goal": "on each engine's default strategy, personalized "
                                       "adds <= 8 ms p50 over plain BM25 with the query "
                                       "cache off, <= 5 ms with warm caches; layer >= 0.5 "
                                       "of the engine's requests/s at concurrency 8"}
    models = [tuple(int(x) for x in m.split("x")) for m in worker_models.split(",") if m]
    for n, name in enumerate(engines.split(",")):
        # The worker models are compared on the first engine (the primary one).
        results["engines"][name] = bench_engine(
            name, LOCAL_ENGINE_URLS[name], movies, users, requests_per_cell, concurrencies,
            models if n == 0 else None)  # type: ignore[arg-type]
    json_path, md_path = write_results("search", results, table(results, concurrencies))
    click.echo(md_path.read_text())
    click.echo(f"written: {json_path}, {md_path}")


if __name__ == "__main__":
    main()
