"""What the workers do: index documents, store events, fold them into interest vectors.

Each function takes a batch and returns a per-item report; a bad item is reported with its
reason and never stops the rest of its batch.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from plugin.documents import Document, InvalidDocument, parse_document
from plugin.events import Event, InvalidEvent, parse_event
from plugin.interest import Contribution, UserInterest
from plugin.services import Services

MAX_UPDATE_ATTEMPTS = 20


class ConcurrentUpdateError(RuntimeError):
    """A user's interest document kept changing under us; the task is retried."""


@dataclass
class BatchReport:
    done: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)

    def error(self, position: int, item_id: str | None, reason: str) -> None:
        self.errors.append({"position": position, "id": item_id, "error": reason})

    def as_dict(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "errors": self.errors,
            "duplicates": self.duplicates,
            "pending": self.pending,
            "notes": self.notes,
        }


def _bulk_error_reason(item: Mapping[str, Any]) -> str:
    info = next(iter(item.values()))
    err = info.get("error", {})
    if isinstance(err, Mapping):
        return f"{err.get('type', 'error')}: {err.get('reason', '')}"
    return str(err)


# -- documents -------------------------------------------------------------------------------


def index_documents(
    services: Services, raw_docs: Sequence[Mapping[str, Any]], refresh: bool = False
) -> BatchReport:
    report = BatchReport()
    docs: list[tuple[int, Document]] = []
    for position, raw in enumerate(raw_docs):
        try:
            docs.append((position, parse_document(raw)))
        except InvalidDocument as exc:
            report.error(position, _raw_id(raw, "id", "doc_id"), str(exc))
    if not docs:
        return report
    embedder = services.embedder
    vectors = embedder.encode([doc.text for _, doc in docs])
    limit = embedder.max_tokens
    for position, doc in docs:
        # The model reads at most `limit` tokens: longer texts are embedded from their start.
        # (Cheap length test first: a token is rarely shorter than two characters.)
        if len(doc.text) > limit * 2 and embedder.token_count(doc.text) > limit:
            report.notes.append({"position": position, "id": doc.doc_id,
                                 "note": f"text truncated to the model's {limit} tokens"})
    settings = services.settings
    now_ms = int(time.time() * 1000)
    actions = []
    positions: dict[str, int] = {}
    for (position, doc), vector in zip(docs, vectors, strict=True):
        if not np.all(np.isfinite(vector)):
            report.error(position, doc.doc_id, "the model returned a non-finite vector")
            continue
        positions[doc.doc_id] = position
        actions.append({
            "_op_type": "index",
            "_index": settings.docs_alias,
            "_id": doc.doc_id,
            "_source": {**doc.source(), "embedding": vector.tolist(), "indexed_at": now_ms},
        })
    for ok, item in services.engine.streaming_bulk(
        actions, raise_on_error=False, raise_on_exception=False, refresh=refresh, chunk_size=500
    ):
        doc_id = str(next(iter(item.values())).get("_id"))
        if ok:
            report.done.append(doc_id)
        else:
            report.error(positions.get(doc_id, -1), doc_id, _bulk_error_reason(item))
    return report


def _raw_id(raw: Any, *keys: str) -> str | None:
    if isinstance(raw, Mapping):
        for key in keys:
            if raw.get(key) is not None:
                return str(raw[key])
    return None


# -- events ----------------------------------------------------------------------------------


def ingest_events(
    services: Services, raw_events: Sequence[Mapping[str, Any]], refresh: bool = False
) -> BatchReport:
    """Validate, deduplicate by ``event_id``, store, and fold new events into user vectors."""
    settings = services.settings
    report = BatchReport()
    events: list[tuple[int, Event]] = []
    seen: set[str] = set()
    for position, raw in enumerate(raw_events):
        try:
            event = parse_event(raw, settings.event_weights)
        except InvalidEvent as exc:
            report.error(position, _raw_id(raw, "event_id"), str(exc))
            continue
        if event.event_id in seen:  # the same event twice in one batch
            report.duplicates.append(event.event_id)
            continue
        seen.add(event.event_id)
        events.append((position, event))
    if not events:
        return report

    texts = [e.text for _, e in events if e.text]
    text_vectors = iter(services.embedder.encode(texts)) if texts else iter(())
    text_embedding: dict[str, list[float]] = {
        e.event_id: next(text_vectors).tolist() for _, e in events if e.text
    }
    doc_vectors = fetch_doc_vectors(services, {e.doc_id for _, e in events if e.doc_id})

    # Store first: `create` refuses an id that exists, which is what makes replays harmless.
    now_ms = int(time.time() * 1000)
    positions = {e.event_id: p for p, e in events}
    by_id = {e.event_id: e for _, e in events}
    actions = []
    for _, event in events:
        ready = event.doc_id is None or event.doc_id in doc_vectors
        source = {**event.source(), "received_at": now_ms,
                  "status": "applied" if ready else "pending"}
        if event.event_id in text_embedding:
            source["text_embedding"] = text_embedding[event.event_id]
        actions.append({"_op_type": "create", "_index": settings.events_alias,
                        "_id": event.event_id, "_source": source})
    stored: list[Event] = []
    for ok, item in services.engine.streaming_bulk(
        actions, raise_on_error=False, raise_on_exception=False, refresh=refresh, chunk_size=1000
    ):
        info = next(iter(item.values()))
        event_id = str(info.get("_id"))
        if ok:
            stored.append(by_id[event_id])
        elif info.get("status") == 409:
            report.duplicates.append(event_id)
        else:
            report.error(positions.get(event_id, -1), event_id, _bulk_error_reason(item))

    ready_events = []
    for event in stored:
        if event.doc_id is not None and event.doc_id not in doc_vectors:
            # Applied once the document is indexed (see apply_pending_events).
            report.pending.append(event.event_id)
        else:
            ready_events.append(event)
    apply_events(services, ready_events, doc_vectors, text_embedding)
    report.done.extend(e.event_id for e in ready_events)
    return report


@dataclass(frozen=True)
class DocVector:
    embedding: list[float]
    tags: tuple[str, ...]


def fetch_doc_vectors(services: Services, doc_ids: Iterable[str]) -> dict[str, DocVector]:
    ids = sorted(set(doc_ids))
    if not ids:
        return {}
    found: dict[str, DocVector] = {}
    client = services.engine.client
    for start in range(0, len(ids), 1000):
        # mget is real-time: a document is visible as soon as its bulk request returned.
        response = client.mget(index=services.settings.docs_alias,
                               body={"ids": ids[start:start + 1000]},
                               _source_includes=["embedding", "tags"])
        for doc in response["docs"]:
            if doc.get("found") and "embedding" in doc.get("_source", {}):
                src = doc["_source"]
                found[doc["_id"]] = DocVector(src["embedding"], tuple(src.get("tags") or ()))
    return found


def contributions(
    event: Event, doc_vectors: Mapping[str, DocVector], text_embedding: Mapping[str, list[float]]
) -> list[Contribution]:
    """The embeddings one event adds: its document's and its text's."""
    items = []
    if event.doc_id is not None:
        doc = doc_vectors[event.doc_id]
        items.append(Contribution(event.timestamp, event.weight, doc.embedding, event.type,
                                  doc.tags))
    if event.event_id in text_embedding:
        items.append(Contribution(event.timestamp, event.weight,
                                  text_embedding[event.event_id], event.type))
    return items


def apply_events(
    services: Services,
    events: Sequence[Event],
    doc_vectors: Mapping[str, DocVector],
    text_embedding: Mapping[str, list[float]],
) -> None:
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_user[event.user_id].append(event)
    for user_id, user_events in by_user.items():
        update_user(services, user_id,
                    [contributions(e, doc_vectors, text_embedding) for e in user_events])


def update_user(
    services: Services, user_id: str, per_event: Sequence[Sequence[Contribution]]
) -> None:
    """Fold events into one user's document, with optimistic concurrency: a writer that lost
    the race reads the new state and folds again, so no update is lost."""
    settings = services.settings
    engine = services.engine
    dims = services.embedder.dims
    for _ in range(MAX_UPDATE_ATTEMPTS):
        current = engine.get_versioned(settings.interests_alias, user_id)
        interest = (UserInterest.from_source(current[0]) if current
                    else UserInterest.empty(user_id, dims))
        for items in per_event:
            for n, item in enumerate(items):
                interest = interest.fold(item, settings.half_life_long_s,
                                         settings.half_life_short_s, count=n == 0)
        version = None if current is None else (current[1], current[2])
        if engine.put_versioned(settings.interests_alias, user_id,
                                interest.to_source(time.time()), version):
            return
    raise ConcurrentUpdateError(f"user {user_id!r}: {MAX_UPDATE_ATTEMPTS} conflicting writers")


def erase_user(services: Services, user_id: str) -> dict[str, int]:
    """Remove a user's interest document and every event of theirs.

    Scan and bulk delete rather than _delete_by_query, which lives in a module (reindex) that
    not every engine build has.
    """
    settings = services.settings
    engine = services.engine
    hits = engine.scan(settings.events_alias, {"query": {"term": {"user_id": user_id}},
                                               "_source": False})
    actions = ({"_op_type": "delete", "_index": h["_index"], "_id": h["_id"]} for h in hits)
    deleted = sum(1 for ok, _ in engine.streaming_bulk(actions, raise_on_error=False,
                                                       refresh=True) if ok)
    found = engine.get_versioned(settings.interests_alias, user_id)
    if found is not None:
        engine.client.delete(index=settings.interests_alias, id=user_id, refresh=True)
    return {"events": deleted, "interests": int(found is not None)}
