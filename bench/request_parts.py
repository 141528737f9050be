"""Where an Elasticsearch `linear_retriever` request's time goes, and what the model's threads
cost the engine request after them (issue 22, the query path).

One session on the Elasticsearch of `make up`: MovieLens movies and users as `bench.search`
prepares them, then, interleaved request by request at concurrency 1 (p50 per variant):

- the default blend's request for each (query, user), and the same request without each
  term, with smaller windows, with ``num_candidates`` = ``k``; before and after a force-merge
  to one segment;
- a query-vector kNN alone (top-level, as a retriever, inside a ``linear`` retriever) at ``k``
  100 and 1,000;
- the query's encode followed by the blended request, with ONNX Runtime's threads spinning
  after each run (the default) or sleeping, with two threads or one.

Writes bench/results/request_parts.{json,md}.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import click
import numpy as np
import requests

from bench.common import QUERIES, isolated_settings, machine, write_results
from bench.search import prepare
from plugin.config import LOCAL_ENGINE_URLS
from plugin.embedding import OnnxEmbedder
from plugin.indices import setup_indices
from plugin.search import SearchParams, search
from plugin.services import Services
from plugin.strategies import TEXT_FIELDS

JSON = dict[str, Any]
Variant = Callable[[JSON, list[float]], JSON]


def _linear(body: JSON) -> JSON:
    linear: JSON = body["retriever"]["linear"]
    return linear


def _without(keep: Callable[[JSON], bool]) -> Variant:
    def variant(body: JSON, vector: list[float]) -> JSON:
        linear = _linear(body)
        linear["retrievers"] = [r for r in linear["retrievers"] if keep(r)]
        return body
    return variant


def _window(size: int) -> Variant:
    def variant(body: JSON, vector: list[float]) -> JSON:
        linear = _linear(body)
        linear["rank_window_size"] = size
        for r in linear["retrievers"]:
            if "knn" in r["retriever"]:
                r["retriever"]["knn"].update(k=size, num_candidates=2 * size)
        return body
    return variant


def _candidates_equal_k(body: JSON, vector: list[float]) -> JSON:
    for r in _linear(body)["retrievers"]:
        if "knn" in r["retriever"]:
            r["retriever"]["knn"]["num_candidates"] = r["retriever"]["knn"]["k"]
    return body


def _is_query_knn(r: JSON) -> bool:
    knn = r["retriever"].get("knn")
    return knn is not None and knn["field"] == "embedding" and "filter" not in knn


def _knn(k: int) -> JSON:
    return {"field": "embedding", "k": k, "num_candidates": 2 * k}


def _knn_alone(shape: str, k: int) -> Variant:
    def variant(body: JSON, vector: list[float]) -> JSON:
        knn = {**_knn(k), "query_vector": vector}
        if shape == "top-level":
            return {"size": 10, "_source": False, "knn": knn}
        if shape == "retriever":
            return {"size": 10, "_source": False, "retriever": {"knn": knn}}
        return {"size": 10, "_source": False, "retriever": {"linear": {
            "rank_window_size": k, "retrievers": [
                {"retriever": {"knn": knn}, "weight": 1.0, "normalizer": "minmax"}]}}}
    return variant


VARIANTS: dict[str, Variant] = {
    "the layer's request": lambda body, vector: body,
    "without the query-vector kNN": _without(lambda r: not _is_query_knn(r)),
    "without the user kNN": _without(lambda r: not ("knn" in r["retriever"]
                                                    and not _is_query_knn(r))),
    "without popularity": _without(lambda r: r["weight"] != 2.0 or "knn" in r["retriever"]),
    "BM25 alone in the linear retriever": _without(lambda r: "knn" not in r["retriever"]
                                                   and r["weight"] == 1.0),
    "num_candidates = k": _candidates_equal_k,
    "window 500": _window(500), "window 200": _window(200), "window 100": _window(100),
    **{f"query kNN alone, {shape}, k {k}": _knn_alone(shape, k)
       for shape in ("top-level", "retriever", "inside linear") for k in (100, 1000)},
}


def _plain(query: str) -> JSON:
    return {"size": 10, "_source": False,
            "query": {"multi_match": {"query": query, "fields": TEXT_FIELDS}}}


def _interleaved(bodies: dict[tuple[str, str], JSON], names: list[str], rounds: int,
                 seed: int) -> Iterator[tuple[bool, str, JSON, str]]:
    """(measured, query, body, name): every name's turn on each body in a shuffled order, so a
    drift of the machine shifts them all alike; the first round (unmeasured) warms up."""
    rng = random.Random(seed)
    names = list(names)
    for n in range(rounds):
        for (query, _), body in bodies.items():
            rng.shuffle(names)
            for name in names:
                yield n > 0, query, body, name


def _p50(values: list[float]) -> float:
    return round(float(np.percentile(values, 50)), 2)


def time_variants(session: requests.Session, url: str, bodies: dict[tuple[str, str], JSON],
                  vectors: dict[str, list[float]], rounds: int) -> dict[str, float]:
    """p50 ms per variant (and plain BM25), interleaved."""
    latencies: dict[str, list[float]] = {"plain BM25": [], **{name: [] for name in VARIANTS}}
    for measured, query, body, name in _interleaved(bodies, list(latencies), rounds, 1):
        request = (_plain(query) if name == "plain BM25"
                   else VARIANTS[name](copy.deepcopy(body), vectors[query]))
        started = time.perf_counter()
        session.post(url, json=request, timeout=30).raise_for_status()
        if measured:
            latencies[name].append((time.perf_counter() - started) * 1000)
    return {name: _p50(v) for name, v in latencies.items()}


def time_encode_then_request(session: requests.Session, url: str,
                             bodies: dict[tuple[str, str], JSON], rounds: int) -> JSON:
    """The query's encode, then the blended request, per ONNX Runtime thread setting."""
    models = {f"{'one thread' if threads else 'all cores'}, {'spinning' if spin else 'sleeping'}":
              OnnxEmbedder(threads=threads, spin=spin)
              for threads in (0, 1) for spin in (True, False)}
    timed: dict[str, dict[str, list[float]]] = {
        name: {"encode": [], "request after": [], "both": []} for name in models}
    for measured, query, body, name in _interleaved(bodies, list(models), rounds, 2):
        time.sleep(0.005)  # as between requests in service
        started = time.perf_counter()
        models[name].encode_one(query)
        encoded = time.perf_counter()
        session.post(url, json=body, timeout=30).raise_for_status()
        done = time.perf_counter()
        if measured:
            for part, seconds in (("encode", encoded - started),
                                  ("request after", done - encoded), ("both", done - started)):
                timed[name][part].append(seconds * 1000)
    return {name: {part: _p50(v) for part, v in parts.items()} for name, parts in timed.items()}


def table(results: JSON) -> str:
    lines = [f"\n### {results['engine']}: the default blend's request and its parts "
             "(c=1, p50 ms)\n", "| variant | 6 segments | 1 segment |", "| --- | --- | --- |"]
    for name, before in results["segments"]["before"].items():
        lines.append(f"| {name} | {before} | {results['segments']['merged'][name]} |")
    lines += ["\n### The query's encode, then the blended request (c=1, p50 ms)\n",
              "| ONNX Runtime threads | encode | request after | both |",
              "| --- | --- | --- | --- |"]
    for name, parts in results["encode_then_request"].items():
        lines.append(f"| {name} | {parts['encode']} | {parts['request after']} | "
                     f"{parts['both']} |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--movies", default=3000, show_default=True)
@click.option("--users", default=5, show_default=True, help="users per query")
@click.option("--rounds", default=6, show_default=True, help="rounds over queries x users")
def main(movies: int, users: int, rounds: int) -> None:
    """Time the linear_retriever request's parts; writes bench/results/request_parts.*"""
    engine_url = LOCAL_ENGINE_URLS["elasticsearch"]
    settings = replace(isolated_settings("parts"), engine_url=engine_url)
    services = Services(settings)
    services.redis.flushdb()
    setup_indices(services.engine, settings, services.embedder.dims)
    try:
        user_ids = prepare(services, movies, users)
        services.engine.refresh(settings.interests_alias)
        bodies = {(q, u): search(services, SearchParams(q, user_id=u,
                                                         strategy="linear_retriever")).request
                  for q in QUERIES for u in user_ids}
        vectors = {q: services.embedder.encode_one(q).tolist() for q in QUERIES}
        session = requests.Session()
        url = f"{engine_url}/{settings.docs_alias}/_search"
        segments = services.engine.client.indices.segments(index=settings.docs_alias)
        count = sum(len(replica["segments"]) for index in segments["indices"].values()
                    for shard in index["shards"].values() for replica in shard)
        before = time_variants(session, url, bodies, vectors, rounds)
        services.engine.force_merge(settings.docs_alias)
        merged = time_variants(session, url, bodies, vectors, rounds)
        results: JSON = {
            "engine": f"{services.engine.kind.value} {services.engine.version}",
            "machine": machine(), "segments_before": count,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "segments": {"before": before, "merged": merged},
            "encode_then_request": time_encode_then_request(session, url, bodies, rounds)}
    finally:
        services.engine.delete_indices(f"{settings.index_prefix}-*")
        services.redis.flushdb()
    text = table(results).replace("6 segments", f"{count} segments")
    json_path, md_path = write_results("request_parts", results, text)
    click.echo(text)
    click.echo(f"written: {json_path}, {md_path}")


if __name__ == "__main__":
    main()
