"""Fine-tuning the language model on a deployment's log (`es-interest train --model`), with the
real model, engine and Redis: what users like together moves closer, texts never trained on too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plugin import pipeline
from plugin.config import LOCAL_ENGINE_URLS, load_settings
from plugin.embedding import default_model_path
from plugin.pipeline.language_model import train_model
from plugin.services import Services
from tests.conftest import RUN_ID, isolated_services

pytestmark = pytest.mark.integration

# Users who like a kind of record also like a kind of coffee, and so on: pairs the base
# model has no reason to put close.
GROUPS = [
    ([f"{s} jazz record on vinyl" for s in ("bebop", "swing", "modal", "cool", "fusion")],
     [f"coffee beans from {o}" for o in ("Ethiopia", "Kenya", "Colombia", "Brazil", "Peru")]),
    ([f"{s} garden tool" for s in ("pruning", "digging", "weeding", "raking", "planting")],
     [f"{c} cookbook" for c in ("Italian", "Thai", "Mexican", "Indian", "French")]),
    ([f"{s} running shoes" for s in ("trail", "road", "track", "racing", "cushioned")],
     [f"{g} science fiction novel" for g in ("space opera", "cyberpunk", "time travel",
                                              "first contact", "dystopian")]),
    ([f"{s} yoga mat" for s in ("thick", "travel", "cork", "rubber", "printed")],
     [f"{g} board game" for g in ("strategy", "party", "cooperative", "trivia", "deduction")]),
]
# Held out: never in the log, one of each side of the first two groups.
HELD = [("hard bop jazz record on vinyl", "coffee beans from Rwanda"),
        ("pruning garden tool", "Greek cookbook")]


def mean_cosine(model_path: str, pairs: list[tuple[str, str]]) -> float:
    """The mean cosine of the pairs' texts under a model (normalized embeddings)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu")
    left = model.encode([a for a, _ in pairs], normalize_embeddings=True)
    right = model.encode([b for _, b in pairs], normalize_embeddings=True)
    return float(np.mean(np.sum(left * right, axis=1)))


@pytest.fixture(scope="module")
def tuned_services(stack: None) -> Iterator[Services]:
    settings = replace(load_settings({}), engine_url=LOCAL_ENGINE_URLS["elasticsearch"],
                       redis_url="redis://127.0.0.1:6379/7",
                       index_prefix=f"test-{RUN_ID}-lm")
    yield from isolated_services(settings)


def test_a_fine_tuned_model_moves_co_interacted_texts_closer(tuned_services: Services,
                                                             tmp_path: Path) -> None:
    docs: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for g, (left, right) in enumerate(GROUPS):
        docs += [{"id": f"g{g}-{side}{i}", "title": text, "tags": []}
                 for side, texts in (("a", left), ("b", right)) for i, text in enumerate(texts)]
        for u in range(6):  # each user alternates the two sides, so they pair in time
            for step, i in enumerate([(u + k) % 5 for k in range(4)]):
                for side in ("a", "b"):
                    events.append({"event_id": uuid.uuid4().hex, "user_id": f"g{g}-u{u}",
                                   "doc_id": f"g{g}-{side}{i}", "type": "like",
                                   "timestamp": 1.7e9 + 100 * step + (side == "b")})
    assert not pipeline.index_documents(tuned_services, docs, refresh=True).errors
    assert not pipeline.ingest_events(tuned_services, events).errors

    before = mean_cosine(default_model_path(), HELD)
    report = train_model(tuned_services, tmp_path / "tuned", budget_s=300.0, max_pairs=None,
                         epochs=4)
    assert report["trained"] and report["complete"] and report["steps"] > 0
    assert (tmp_path / "tuned" / "es-interest-fine-tune.json").exists()
    after = mean_cosine(str(tmp_path / "tuned"), HELD)
    assert after > before + 0.05, (before, after)
    # What no user tied together does not move closer: records and cookbooks.
    unrelated = [(HELD[0][0], HELD[1][1])]
    assert mean_cosine(str(tmp_path / "tuned"), unrelated) < after
