"""Embed documents in batches and index them; re-indexing an id replaces the document."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from plugin.documents import POPULARITY_FIELD, Document, InvalidDocument, parse_document
from plugin.pipeline import behaviour, popularity
from plugin.pipeline.events import apply_pending_events
from plugin.pipeline.report import BatchReport, raw_id
from plugin.services import Services

LEARNED = [POPULARITY_FIELD, *behaviour.FIELDS]


def index_documents(
    services: Services, raw_docs: Sequence[Mapping[str, Any]], refresh: bool = False
) -> BatchReport:
    report = BatchReport()
    docs: list[tuple[int, Document]] = []
    for position, raw in enumerate(raw_docs):
        try:
            docs.append((position, parse_document(raw)))
        except InvalidDocument as exc:
            report.error(position, raw_id(raw, "id", "doc_id"), str(exc))
    if not docs:
        return report
    embedder = services.embedder
    settings = services.settings
    texts = {position: doc.embedded_text(settings.embed_fields, settings.embed_title_cleanup)
             for position, doc in docs if doc.embedding is None}
    encoded = iter(embedder.encode(list(texts.values())))
    vectors = [next(encoded) if doc.embedding is None
               else np.asarray(doc.embedding, dtype=np.float32) for _, doc in docs]
    limit = embedder.max_tokens
    now_ms = int(time.time() * 1000)
    learned = _learned_fields(services, [doc.doc_id for _, doc in docs])
    from_text = _text_mapper(services)
    actions = []
    positions: dict[str, int] = {}
    for (position, doc), vector in zip(docs, vectors, strict=True):
        if not np.all(np.isfinite(vector)):
            report.error(position, doc.doc_id, "the model returned a non-finite vector")
            continue
        if len(vector) != embedder.dims:
            report.error(position, doc.doc_id,
                         f"'embedding' has {len(vector)} dimensions, the index {embedder.dims}")
            continue
        # The model reads at most `limit` tokens: longer texts are embedded from their start.
        # (Cheap length test first: a token is rarely shorter than two characters.)
        text = texts.get(position, "")
        if len(text) > limit * 2 and embedder.token_count(text) > limit:
            report.notes.append({"position": position, "id": doc.doc_id,
                                 "note": f"text truncated to the model's {limit} tokens"})
        positions[doc.doc_id] = position
        actions.append({
            "_op_type": "index",
            "_index": services.settings.docs_alias,
            "_id": doc.doc_id,
            "_source": {**doc.source(), **learned.get(doc.doc_id, {}),
                        **(from_text(vector) if "behaviour" not in learned.get(doc.doc_id, {})
                           else {}),
                        "embedding": vector.tolist(), "indexed_at": now_ms},
        })
    outcome = services.engine.bulk(actions, refresh=refresh)
    report.done += [item.id for item in outcome.written]
    for item in outcome.conflicts + outcome.missing + outcome.failed:
        report.error(positions.get(item.id, -1), item.id, item.reason)
    # Indexing by id is idempotent: the retried task writes the whole batch again.
    outcome.raise_if_busy("documents not indexed")
    if report.done:
        popularity.mark_dirty(services, report.done)
        applied = apply_pending_events(services, report.done)
        if applied:
            report.notes.append({"note": f"applied {applied} events that waited for these "
                                         "documents"})
    return report


def _text_mapper(services: Services) -> Callable[[np.ndarray], dict[str, Any]]:
    """A new document's behaviour fields from its content vector, where the current training
    run made a content-to-behaviour map (plugin/pipeline/behaviour.py); else none."""
    version = behaviour.current_version(services) if services.settings.behaviour_text_map \
        else None
    mapping = behaviour.text_map(services, version) if version else None
    if mapping is None:
        return lambda _: {}
    confidence = services.settings.behaviour_text_map_confidence
    return lambda vector: {
        "behaviour": [round(float(x), 6)
                      for x in behaviour.map_text(mapping, vector, confidence)[0]],
        "behaviour_version": version}


def _learned_fields(services: Services, doc_ids: list[str]) -> dict[str, dict[str, Any]]:
    """What the workers learned about documents already indexed (behaviour vector,
    popularity): a new version of a document keeps them, as a client never sends them."""
    found = services.engine.mget_sources(services.settings.docs_alias, doc_ids, LEARNED)
    return {doc_id: source for doc_id, source in found.items() if source}
