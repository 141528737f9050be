"""Model backends benchmark (`make bench`): torch against its ONNX exports, on this CPU.

Each backend runs in its own fresh process (so its memory is its own), on the same MovieLens
texts the document path embeds ("title | genres, tags") and on short search queries:

- sentences/s of batched ``encode`` (the document path), as a ratio to torch's;
- one uncached query's encode, p50/p99 (what an uncached personalized search adds);
- cosine of each vector to torch's, mean and min (the goal: >= 0.99);
- resident memory after loading and encoding, and whether torch was imported.

NDCG with each backend comes from `es-interest eval` (docs/evaluation.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from bench.common import QUERIES, ROOT, machine, process_rss_mb, write_results
from plugin.embedding import BACKENDS


def run_backend(backend: str, texts_limit: int, vectors_out: str, threads: int) -> dict[str, Any]:
    """In this (fresh) process: load, time, and save the vectors for the comparison."""
    from plugin.embedding import get_embedder
    from plugin.movielens import movie_documents

    texts = [f"{d['title']} | {', '.join(d['tags'])}" for d in movie_documents(limit=texts_limit)]
    started = time.perf_counter()
    embedder = get_embedder(batch_size=32, threads=threads, backend=backend)
    load_s = time.perf_counter() - started
    embedder.encode(texts[:64])  # warm up
    started = time.perf_counter()
    vectors = embedder.encode(texts)
    encode_s = time.perf_counter() - started
    one = []
    for _ in range(5):
        for query in QUERIES:
            started = time.perf_counter()
            embedder.encode_one(query)
            one.append((time.perf_counter() - started) * 1000)
    query_vectors = embedder.encode(QUERIES)
    np.save(vectors_out, np.vstack([vectors, query_vectors]))
    rss = process_rss_mb({os.getpid()})[os.getpid()]
    return {"backend": backend, "load_s": round(load_s, 2), "texts": len(texts),
            "sentences_per_s": round(len(texts) / encode_s, 1),
            "query_p50_ms": round(float(np.percentile(one, 50)), 2),
            "query_p99_ms": round(float(np.percentile(one, 99)), 2),
            "rss_mb": round(rss, 1), "torch_imported": "torch" in sys.modules}


def table(results: dict[str, Any]) -> str:
    lines = ["| backend | sentences/s | vs torch | one query p50 / p99 | cosine to torch "
             "(mean / min) | RSS | torch imported |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["backends"]:
        lines.append(
            f"| {r['backend']} | {r['sentences_per_s']} | {r['ratio_to_torch']} | "
            f"{r['query_p50_ms']} / {r['query_p99_ms']} ms | {r['cosine_mean']} / "
            f"{r['cosine_min']} | {r['rss_mb']:.0f} MiB | {r['torch_imported']} |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--texts", default=3000, show_default=True, help="MovieLens texts to encode")
@click.option("--threads", default=0, show_default=True,
              help="intra-op threads per backend (0: the library's default, all cores)")
@click.option("--child", hidden=True, default="")
def main(texts: int, threads: int, child: str) -> None:
    """Measure each model backend; writes bench/results/model.{json,md}."""
    if child:
        backend, out = child.split(":", 1)
        click.echo(json.dumps(run_backend(backend, texts, out, threads)))
        return
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        vectors = {}
        for backend in BACKENDS:
            out = str(Path(tmp) / f"{backend}.npy")
            done = subprocess.run([sys.executable, "-m", "bench.model", "--texts", str(texts),
                                   "--threads", str(threads), "--child", f"{backend}:{out}"],
                                  cwd=ROOT, capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            vectors[backend] = np.load(out)
    torch_run = next(r for r in runs if r["backend"] == "torch")
    for r in runs:
        cosine = (vectors[r["backend"]] * vectors["torch"]).sum(axis=1)
        r.update(ratio_to_torch=round(r["sentences_per_s"] / torch_run["sentences_per_s"], 3),
                 cosine_mean=round(float(cosine.mean()), 4),
                 cosine_min=round(float(cosine.min()), 4))
    results = {"machine": machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "threads": threads, "backends": runs, "goal_cosine": 0.99}
    json_path, md_path = write_results("model", results, table(results))
    click.echo(md_path.read_text())
    click.echo(f"written: {json_path}, {md_path}")


if __name__ == "__main__":
    main()
