"""The language model adapted to the operator's users: fine-tuning on co-interaction pairs.

Two documents one user liked close together in time are a positive pair; the other pairs'
documents in the same batch are the negatives (sentence-transformers'
``MultipleNegativesRankingLoss``). What users like together then embeds closer, for documents
nobody has interacted with yet too, since the model reads their text.

The result is a new model folder (a sentence-transformers save). A deployment switches to it
by pointing ``ES_INTEREST_MODEL`` at it and re-embedding its documents and users (`es-interest
ingest` of the documents again, then `es-interest rebuild`); queries and documents must come
from the same model.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from plugin.documents import parse_document
from plugin.pipeline.behaviour import positive_sequences
from plugin.services import Services

WINDOW = 5  # a document pairs with the next few the same user liked
LEARNING_RATE = 2e-5
BATCH_SIZE = 32


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
              progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Fine-tune the model at ``base`` on text pairs for at most ``epochs`` passes or
    ``budget_s`` seconds, whichever ends first; save it to ``out``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import (
        MultipleNegativesRankingLoss,
    )

    torch.manual_seed(seed)
    started = time.time()
    model = SentenceTransformer(base, device="cpu")
    model.train()
    loss = MultipleNegativesRankingLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    plan = batches(pairs, batch_size)
    steps = seen = 0
    for _ in range(epochs):
        for batch in plan:
            if time.time() - started > budget_s:
                break
            features = [model.preprocess([a for a, _ in batch]),
                        model.preprocess([b for _, b in batch])]
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
    report = {"base": base, "pairs": len(pairs), "pairs_trained": seen, "steps": steps,
              "batch_size": batch_size, "budget_s": budget_s,
              "seconds": round(time.time() - started, 1),
              "complete": seen >= sum(len(b) for b in plan) * epochs}
    (out / "es-interest-fine-tune.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def document_texts(services: Services) -> dict[str, str]:
    """Each indexed document's text as the model reads it (plugin/documents.py)."""
    settings = services.settings
    return {h["_id"]: parse_document({**h["_source"], "id": h["_id"]}).embedded_text(
        settings.embed_fields, settings.embed_title_cleanup)
        for h in services.engine.scan(settings.docs_alias, {"_source": {"excludes": [
            "embedding", "behaviour"]}})}


def train_model(services: Services, out: Path, budget_s: float, max_pairs: int | None,
                epochs: int = 1, progress: Callable[[int], None] | None = None
                ) -> dict[str, Any]:
    """Fine-tune the deployment's model on its own log's co-interaction pairs."""
    from plugin.embedding import default_model_path

    texts = document_texts(services)
    pairs = [(texts[a], texts[b]) for a, b in co_interaction_pairs(
        positive_sequences(services), limit=max_pairs) if a in texts and b in texts]
    if not pairs:
        return {"trained": False, "reason": "no two documents liked by one user"}
    base = services.settings.model or default_model_path()
    return {"trained": True, "path": str(out),
            **fine_tune(base, pairs, out, budget_s, epochs=epochs, progress=progress)}
