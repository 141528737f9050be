"""GPU figures (`python -m bench.gpu`): the document path's embedding throughput and the
language model's fine-tuning, on a machine with a GPU, torch and sentence-transformers but
none of the deployment's services (often a separate, offline machine).

Three steps:

- ``prepare BUNDLE`` (here): the model in float16 (half the bytes to carry), the MovieLens
  movies, and the evaluation split's training co-interaction pairs (``data.split`` over every
  user: the same cut, the same events, the same pairs `make eval` fine-tunes on).
- ``run BUNDLE OUT`` (on the GPU machine): raw ``encode`` against the document path's own
  work (parse, embedded text, ``TorchEmbedder``, the bulk action's JSON) at several batch sizes,
  one query's encode, then ``fine_tune`` over every pair. The fine-tuned weights come back in
  float16 pieces.
- ``collect OUT`` (here): the fine-tuned model folder in float32 and
  bench/results/gpu.{json,md}; `es-interest eval --language-model FOLDER` then scores it on
  validation against the shipped model.

The engine's indexing is not part of the document-path figure (no engine on that machine):
`python -m bench.pipeline` measures the whole path, on the CPU.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

MODEL_FILES = "model-files.tar"
WEIGHTS = "model.safetensors"
PIECE_BYTES = 15 * 2**20  # what one file back from such a machine may hold, with room
BATCH_SIZES = (32, 128, 512)
WARM_UP = 2048


@click.group()
def main() -> None:
    """GPU figures: prepare a bundle here, run it on the GPU machine, collect the results."""


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False, path_type=Path))
def prepare(bundle: Path) -> None:
    """Write the model (float16), the movies and the training pairs into BUNDLE."""
    from safetensors.torch import load_file, save_file

    from plugin.config import DEFAULT_EVENT_WEIGHTS
    from plugin.embedding import default_model_path
    from plugin.evaluation import data
    from plugin.events import parse_event, positive_sequences_of
    from plugin.fine_tuning import co_interaction_pairs

    bundle.mkdir(parents=True, exist_ok=True)
    source = Path(default_model_path())
    model = bundle / "model"
    shutil.copytree(source, model, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(WEIGHTS, "*.onnx", "onnx*"))
    weights = load_file(str(source / WEIGHTS))
    save_file({k: v.half() for k, v in weights.items()}, str(model / WEIGHTS))
    split, movies = data.split()
    events = [parse_event(e, DEFAULT_EVENT_WEIGHTS) for e in split.train]
    sequences = positive_sequences_of(e.source() for e in events if e.doc_id is not None)
    pairs = co_interaction_pairs(sequences)
    (bundle / "movies.json").write_text(json.dumps(movies))
    (bundle / "pairs.json").write_text(json.dumps(pairs))
    click.echo(f"{bundle}: {len(movies)} movies, {len(split.train)} training events of "
               f"{len(sequences)} users, {len(pairs)} pairs")


def _embedded_text(movie: dict[str, Any]) -> str:
    """The movie as the shipped defaults embed it (fields, title cleanup)."""
    from plugin.config import load_settings
    from plugin.documents import parse_document

    defaults = load_settings({})
    return parse_document(movie).embedded_text(defaults.embed_fields,
                                               defaults.embed_title_cleanup)


def _document_path(embedder: Any, movies: list[dict[str, Any]]) -> int:
    """What a worker does for a batch of documents before the engine: parse, the embedded
    text, encode, the bulk action's JSON. Returns the bytes it would send."""
    vectors = embedder.encode([_embedded_text(m) for m in movies])
    return sum(len(json.dumps({**m, "embedding": v.tolist()}))
               for m, v in zip(movies, vectors, strict=True))


def _timed(fn: Any) -> float:
    """Seconds ``fn`` takes, the GPU's queued work included."""
    import torch

    def settle() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    settle()
    started = time.perf_counter()
    fn()
    settle()
    return time.perf_counter() - started


def _throughput(model_dir: str, movies: list[dict[str, Any]], texts: int) -> dict[str, Any]:
    import torch

    from plugin.embedding import TorchEmbedder

    device = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU: a trial run
    corpus = (movies * (texts // len(movies) + 1))[:texts]
    strings = [_embedded_text(m) for m in corpus]
    rows: list[dict[str, Any]] = []
    for batch_size in BATCH_SIZES:
        embedder = TorchEmbedder(model_dir, device=device, batch_size=batch_size)
        model = embedder._model
        embedder.encode(strings[:WARM_UP])  # warm up: kernels, allocator
        raw = _timed(lambda m=model, b=batch_size: m.encode(
            strings, batch_size=b, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False))
        path = _timed(lambda e=embedder: _document_path(e, corpus))
        model.half()
        model.encode(strings[:WARM_UP], batch_size=batch_size)
        half = _timed(lambda m=model, b=batch_size: m.encode(
            strings, batch_size=b, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False))
        rows.append({"batch_size": batch_size, "texts": len(strings),
                     "raw_fp32_per_s": round(len(strings) / raw, 1),
                     "document_path_fp32_per_s": round(len(strings) / path, 1),
                     "path_to_raw": round(raw / path, 3),
                     "raw_fp16_per_s": round(len(strings) / half, 1)})
        click.echo(f"throughput: {rows[-1]}")
    one = TorchEmbedder(model_dir, device=device, batch_size=1)
    queries = ["space adventure", "romantic comedy in paris", "dark thriller", "pixar",
               "documentary about music", "war drama"]
    for q in queries:
        one.encode_one(q)
    latencies = [_timed(lambda q=q: one.encode_one(q)) * 1000 for q in queries * 20]
    return {"rows": rows, "query_p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "query_p99_ms": round(float(np.percentile(latencies, 99)), 2)}


@main.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--texts", default=50_000, show_default=True,
              help="texts per throughput measurement (the movies, repeated)")
@click.option("--budget-s", default=240.0, show_default=True,
              help="fine-tuning stops after this many seconds")
@click.option("--epochs", default=1, show_default=True, help="passes over the pairs")
@click.option("--skip-throughput", is_flag=True, help="only fine-tune")
def run(bundle: Path, out: Path, texts: int, budget_s: float, epochs: int,
        skip_throughput: bool) -> None:
    """On the GPU machine: throughput, then fine-tuning; results and weights into OUT."""
    import torch
    from safetensors.torch import load_file, save_file

    from plugin.fine_tuning import fine_tune

    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__}

    def save() -> None:
        (out / "gpu.json").write_text(json.dumps(results, indent=1))

    # Loaded as saved, float16 weights would train in float16: too coarse for AdamW's steps.
    model_dir = "/tmp/es-interest-gpu-base"
    shutil.copytree(bundle / "model", model_dir, dirs_exist_ok=True)
    save_file({k: v.float() for k, v in load_file(str(bundle / "model" / WEIGHTS)).items()},
              f"{model_dir}/{WEIGHTS}")
    movies = json.loads((bundle / "movies.json").read_text())
    if not skip_throughput:
        try:
            results["throughput"] = _throughput(model_dir, movies, texts)
        except Exception as exc:  # the fine-tuning below still runs: one lease, one try
            results["throughput_error"] = repr(exc)
        save()
    text = {m["id"]: _embedded_text(m) for m in movies}
    pairs = [(text[a], text[b]) for a, b in json.loads((bundle / "pairs.json").read_text())
             if a in text and b in text]
    tuned = Path("/tmp/es-interest-gpu-fine-tuned")
    results["fine_tune"] = fine_tune(model_dir, pairs, tuned, budget_s, epochs=epochs)
    results["fine_tune"]["pairs_per_s"] = round(
        results["fine_tune"]["pairs_trained"] / max(results["fine_tune"]["seconds"], 1e-9), 1)
    save()
    weights = load_file(str(tuned / WEIGHTS))
    half = out / "weights.fp16"
    save_file({k: v.half().contiguous() for k, v in weights.items()}, str(half))
    blob = half.read_bytes()
    half.unlink()
    for n in range(0, len(blob), PIECE_BYTES):
        (out / f"weights.part{n // PIECE_BYTES}").write_bytes(blob[n:n + PIECE_BYTES])
    with tarfile.open(out / MODEL_FILES, "w") as tar:
        for path in tuned.rglob("*"):
            if path.is_file() and path.name != WEIGHTS:
                tar.add(path, arcname=str(path.relative_to(tuned)))
    click.echo(json.dumps(results))


def _table(results: dict[str, Any]) -> str:
    lines = [f"GPU: {results['device']} (torch {results['torch']})", ""]
    if "throughput" in results:
        t = results["throughput"]
        lines += ["| batch | raw encode fp32 (sentences/s) | document path fp32 (docs/s) | "
                  "path / raw | raw encode fp16 |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['batch_size']} | {r['raw_fp32_per_s']} | "
                  f"{r['document_path_fp32_per_s']} | {r['path_to_raw']} | "
                  f"{r['raw_fp16_per_s']} |" for r in t["rows"]]
        lines += ["", f"One query's encode: p50 {t['query_p50_ms']} ms, "
                      f"p99 {t['query_p99_ms']} ms.", ""]
    f = results.get("fine_tune")
    if f:
        lines += [f"Fine-tuning: {f['pairs_trained']} of {f['pairs']} pairs, {f['steps']} steps "
                  f"of {f['batch_size']} in {f['seconds']} s ({f['pairs_per_s']} pairs/s), "
                  f"complete: {f['complete']}.", ""]
    return "\n".join(lines)


@main.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model-out", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="where the fine-tuned model goes (default: OUT/model)")
def collect(out: Path, model_out: Path | None) -> None:
    """Here: the fine-tuned model folder (float32) and bench/results/gpu.{json,md}."""
    from safetensors.torch import load, save_file

    from bench.common import write_results

    results = json.loads((out / "gpu.json").read_text())
    pieces = sorted(out.glob("weights.part*"), key=lambda p: int(p.suffix[len(".part"):]))
    if pieces:
        folder = model_out or out / "model"
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(out / MODEL_FILES) as tar:
            tar.extractall(folder, filter="data")
        weights = load(b"".join(p.read_bytes() for p in pieces))
        save_file({k: v.float() for k, v in weights.items()}, str(folder / WEIGHTS))
        results["fine_tuned_model"] = str(folder)
        click.echo(f"fine-tuned model: {folder}")
    json_path, md_path = write_results("gpu", results, _table(results))
    click.echo(f"written: {json_path}, {md_path}")


if __name__ == "__main__":
    main()
