"""The model's backends on the real packaged model: torch, and its ONNX exports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plugin.embedding import BACKENDS, default_model_path, get_embedder
from plugin.movielens import movie_documents
from plugin.onnx_export import check_pooling, export, exported_path

pytestmark = pytest.mark.integration

TEXTS = [f"{d['title']} | {', '.join(d['tags'])}" for d in movie_documents(limit=300)] + [
    "space adventure", "a review: " + "the pacing drags in the middle, " * 60, "x", "日本の映画"]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return get_embedder(backend="torch").encode(TEXTS)


@pytest.mark.parametrize(("backend", "mean_cosine", "min_cosine"),
                         [("onnx", 0.9999, 0.9999), ("onnx-int8", 0.99, 0.98)])
def test_onnx_backends_give_torchs_vectors(backend: str, mean_cosine: float, min_cosine: float,
                                           reference: np.ndarray) -> None:
    embedder = get_embedder(backend=backend)
    vectors = embedder.encode(TEXTS)
    assert vectors.shape == reference.shape and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosine = (vectors * reference).sum(axis=1)
    assert cosine.mean() >= mean_cosine and cosine.min() >= min_cosine
    # The order of a batch changes nothing (it is sorted by length inside); int8's dynamic
    # quantization scales activations by what else is in the batch, so only nearly.
    reordered = embedder.encode(TEXTS[::-1])[::-1]
    alone = embedder.encode_one(TEXTS[5])
    if backend == "onnx":
        np.testing.assert_allclose(reordered, vectors, atol=1e-5)
        np.testing.assert_allclose(alone, vectors[5], atol=1e-5)
    else:
        assert (reordered * vectors).sum(axis=1).min() >= 0.97
        assert float(alone @ vectors[5]) >= 0.97
    assert embedder.encode([]).shape == (0, embedder.dims)


def test_every_backend_counts_tokens_and_truncates_alike() -> None:
    long_text = TEXTS[-3]
    counts = {b: get_embedder(backend=b).token_count(long_text) for b in BACKENDS}
    assert len(set(counts.values())) == 1 and counts["torch"] > 256
    assert {get_embedder(backend=b).max_tokens for b in BACKENDS} == {256}


def test_export_is_keyed_by_the_model_and_made_once(tmp_path: Path) -> None:
    folder = Path(default_model_path())
    check_pooling(folder)
    path = export(folder, int8=True, cache_dir=tmp_path)
    assert path == exported_path(folder, True, tmp_path) and path.stat().st_size > 1_000_000
    assert exported_path(folder, False, tmp_path).exists()
    made = path.stat().st_mtime_ns
    assert export(folder, int8=True, cache_dir=tmp_path).stat().st_mtime_ns == made
    assert not list(tmp_path.rglob("*.tmp"))  # written under a temporary name, then renamed


def test_a_model_the_export_cannot_reproduce_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cls-model"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "modules.json").write_text(
        '[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},'
        ' {"idx": 1, "name": "1", "path": "1_Pooling",'
        ' "type": "sentence_transformers.models.Pooling"}]')
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    with pytest.raises(ValueError, match=r"not mean pooling.*MODEL_BACKEND=torch"):
        check_pooling(folder)
    # sentence-transformers 6 writes one mode (as a model `train --model` saves does).
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode": "cls"}')
    with pytest.raises(ValueError, match=r"not mean pooling"):
        check_pooling(folder)
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode": "mean"}')
    check_pooling(folder)


def test_an_onnx_process_never_imports_torch() -> None:
    code = ("import sys; from plugin.embedding import get_embedder; "
            "e = get_embedder(backend='onnx'); e.encode(['hello']); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"
