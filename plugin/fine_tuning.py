"""Fine-tuning the sentence-transformers model on co-interaction pairs.

Two documents one user liked close together in time are a positive pair; the other pairs'
documents in the same batch are the negatives (sentence-transformers'
``MultipleNegativesRankingLoss``). What users like together then embeds closer, for documents
nobody has interacted with yet too, since the model reads their text.

No engine, Redis or Celery here: a GPU machine with only torch and sentence-transformers runs
it too (bench/gpu.py). plugin/pipeline/language_model.py feeds it a deployment's own log.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

WINDOW = 5  # a document pairs with the next few the same user liked
LEARNING_RATE = 2e-5
BATCH_SIZE = 32
REPORT = "es-interest-fine-tune.json"  # what a fine-tuned folder says of its training


def co_interaction_pairs(sequences: dict[str, list[str]], window: int = WINDOW,
                         limit: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """Unordered pairs of documents one user liked within ``window`` of each other in time,
    each once, shuffled; at most ``limit``."""
    seen: set[tuple[str, str]] = set()
    pairs: list[tuple[str, str]] = []
    for user in sorted(sequences):
        docs = sequences[user]
        for i, first in enumerate(docs):
            for second in docs[i + 1:i + 1 + window]:
                key = (first, second) if first < second else (second, first)
                if first != second and key not in seen:
                    seen.add(key)
                    pairs.append(key)
    random.Random(seed).shuffle(pairs)
    return pairs[:limit] if limit is not None else pairs


def batches(pairs: Sequence[tuple[str, str]], size: int) -> list[list[tuple[str, str]]]:
    """Every pair in a batch of at most ``size`` in which no document appears twice: another
    pair's document is a negative, so it must not be this pair's positive."""
    done: list[list[tuple[str, str]]] = []
    filling: list[tuple[list[tuple[str, str]], set[str]]] = []
    for pair in pairs:
        for n, (batch, members) in enumerate(filling):
            if pair[0] not in members and pair[1] not in members:
                batch.append(pair)
                members.update(pair)
                if len(batch) >= size:
                    done.append(filling.pop(n)[0])
                break
        else:
            filling.append(([pair], set(pair)))
    return done + [batch for batch, _ in filling]


def fine_tune(base: str, pairs: Sequence[tuple[str, str]], out: Path, budget_s: float,
              batch_size: int = BATCH_SIZE, epochs: int = 1, seed: int = 0,
              progress: Callable[[int], None] | None = None,
              device: str | None = None) -> dict[str, Any]:
    """Fine-tune the model at ``base`` on text pairs for at most ``epochs`` passes or
    ``budget_s`` seconds, whichever ends first; save it to ``out``. ``device``: a torch
    device; by default the GPU where torch sees one, else the CPU."""
    import torch
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers 6 moved the losses; setup.cfg allows 3 to 6
        from sentence_transformers.sentence_transformer.losses import (
            MultipleNegativesRankingLoss,
        )
    except ImportError:
        from sentence_transformers.losses import (  # type: ignore[no-redef]
            MultipleNegativesRankingLoss,
        )

    torch.manual_seed(seed)
    started = time.time()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = SentenceTransformer(base, device=device)
    model.train()
    loss = MultipleNegativesRankingLoss(model)
    # sentence-transformers 6 renamed ``tokenize``; setup.cfg allows 3 to 6.
    tokenize = getattr(model, "preprocess", None) or model.tokenize
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    plan = batches(pairs, batch_size)
    steps = seen = 0
    for _ in range(epochs):
        for batch in plan:
            if time.time() - started > budget_s:
                break
            features = [_on_device(tokenize([a for a, _ in batch]), device),
                        _on_device(tokenize([b for _, b in batch]), device)]
            value = loss(features, torch.empty(0))
            value.backward()
            optimizer.step()
            optimizer.zero_grad()
            steps += 1
            seen += len(batch)
            if progress is not None:
                progress(len(batch))
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    report = {"base": base, "device": device, "pairs": len(pairs), "pairs_trained": seen,
              "steps": steps,
              "batch_size": batch_size, "budget_s": budget_s,
              "seconds": round(time.time() - started, 1),
              "complete": seen >= sum(len(b) for b in plan) * epochs}
    (out / REPORT).write_text(json.dumps(report, indent=1) + "\n")
    return report


def text_pairs(sequences: dict[str, list[str]], texts: dict[str, str],
               limit: int | None = None) -> list[tuple[str, str]]:
    """The co-interaction pairs (``co_interaction_pairs``) as the model reads the documents;
    pairs with a document that has no text are left out."""
    return [(texts[a], texts[b]) for a, b in co_interaction_pairs(sequences, limit=limit)
            if a in texts and b in texts]


def _on_device(features: dict[str, Any], device: str) -> dict[str, Any]:
    """The tokenizer's tensors, moved to where the model is."""
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in features.items()}
