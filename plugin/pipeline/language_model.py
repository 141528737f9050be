"""The language model adapted to the operator's users: fine-tuning (plugin/fine_tuning.py)
on the deployment's own log.

The result is a new model folder (a sentence-transformers save). `es-interest model switch
FOLDER` moves a running deployment to it (plugin/pipeline/model_switch.py): queries and
documents must come from the same model. Training runs on the GPU where torch sees one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from plugin.documents import parse_document
from plugin.fine_tuning import fine_tune, text_pairs
from plugin.services import Services


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
    from plugin.pipeline.behaviour import positive_sequences

    pairs = text_pairs(positive_sequences(services), document_texts(services), max_pairs)
    if not pairs:
        return {"trained": False, "reason": "no two documents liked by one user"}
    base = services.settings.model or default_model_path()
    return {"trained": True, "path": str(out),
            **fine_tune(base, pairs, out, budget_s, epochs=epochs, progress=progress)}
