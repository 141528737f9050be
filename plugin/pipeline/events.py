"""Ingest events: validate, deduplicate by ``event_id``, fold into user vectors, store.

One write per event: an event is folded first and then stored as ``applied`` (or stored as
``pending`` when its document is not indexed yet). A batch redelivered after a worker died
between the two finds its events not stored and folds them again; the user document remembers
the ids it applied recently, so they count once. An event already stored is a duplicate.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from plugin.events import APPLIED, PENDING, Event, InvalidEvent, parse_event
from plugin.interest import DocVector
from plugin.pipeline import behaviour, popularity
from plugin.pipeline.doc_vectors import fetch_doc_vectors
from plugin.pipeline.report import BatchReport, raw_id
from plugin.pipeline.users import erased_events, fold_into_users
from plugin.services import Services


def ingest_events(
    services: Services, raw_events: Sequence[Mapping[str, Any]], refresh: bool = False,
    accepted_at_ms: int | None = None,
) -> BatchReport:
    """``accepted_at_ms``: when the API accepted the batch (now, when called directly); each
    stored event keeps it, and when it was applied, so the update lag can be watched."""
    settings = services.settings
    report = BatchReport()
    events: list[tuple[int, Event]] = []
    seen: set[str] = set()
    for position, raw in enumerate(raw_events):
        try:
            event = parse_event(raw, settings.event_weights)
        except InvalidEvent as exc:
            report.error(position, raw_id(raw, "event_id"), str(exc))
            continue
        if event.event_id in seen:  # the same event twice in one batch
            report.duplicates.append(event.event_id)
            continue
        seen.add(event.event_id)
        events.append((position, event))
    if not events:
        return report

    stored = services.engine.mget_versioned(settings.events_alias, [e.event_id for _, e in events])
    report.duplicates += [e.event_id for _, e in events if e.event_id in stored]
    events = [(p, e) for p, e in events if e.event_id not in stored]
    if not events:
        return report

    with_text = [e for _, e in events if e.text]
    text_embedding: dict[str, list[float]] = {}
    if with_text:  # the model loads only in workers that see text
        vectors = services.embedder.encode([e.text or "" for e in with_text])
        text_embedding = {e.event_id: v.tolist() for e, v in zip(with_text, vectors, strict=True)}
    docs = fetch_doc_vectors(services, {e.doc_id for _, e in events if e.doc_id})

    now_ms = int(time.time() * 1000)
    accepted = min(accepted_at_ms or now_ms, now_ms)  # another machine's clock may run ahead
    sources: dict[str, dict[str, Any]] = {}
    for _, event in events:
        ready = event.doc_id is None or event.doc_id in docs
        source = {**event.source(), "received_at": now_ms, "accepted_at": accepted,
                  "status": APPLIED if ready else PENDING}
        if event.event_id in text_embedding:
            source["text_embedding"] = text_embedding[event.event_id]
        sources[event.event_id] = source
    positions = {e.event_id: p for p, e in events}
    for event_id in erased_events(services, list(sources.values())):
        report.error(positions[event_id], event_id, "its user was erased after this event "
                     "happened or was accepted: it is not applied")
        del sources[event_id]
    ready_sources = [s for s in sources.values() if s["status"] == APPLIED]
    fold_into_users(services, ready_sources, docs, report.users)
    stamp_applied(ready_sources)
    created = _store(services, sources, positions, report, refresh)
    report.done += [s["event_id"] for s in ready_sources if s["event_id"] in created]
    # Popularity counts what this call stored (an event is created once, whoever retries).
    _count_applied(services, [s for s in ready_sources if s["event_id"] in created])

    waiting = [s for s in sources.values() if s["status"] == PENDING and s["event_id"] in created]
    if waiting:
        # Pending events must be visible to a document task's search before we look for their
        # documents again: then one of the two sides is sure to see the other.
        services.engine.refresh(settings.events_alias)
        docs.update(fetch_doc_vectors(services, {s["doc_id"] for s in waiting}))
        arrived = [s for s in waiting if s["doc_id"] in docs]
        _apply_stored(services, arrived, docs, report)
        report.done += [s["event_id"] for s in arrived]
        report.pending += [s["event_id"] for s in waiting if s["doc_id"] not in docs]
    return report


def ingest_event_batches(
    services: Services, batches: Sequence[Sequence[Mapping[str, Any]]], refresh: bool = False,
    accepted_at_ms: int | None = None,
) -> list[BatchReport]:
    """Several batches as one (one read of the log, one write per user, one store), each
    with its own report: positions within it, and each event id reported to the batch it
    came in (an id sent in two of them: ``done`` to the first, ``duplicates`` to the next)."""
    combined = [event for batch in batches for event in batch]
    whole = ingest_events(services, combined, refresh=refresh, accepted_at_ms=accepted_at_ms)
    if len(batches) == 1:
        return [whole]
    starts = list(itertools.accumulate((len(b) for b in batches), initial=0))
    batch_at = [i for i, batch in enumerate(batches) for _ in batch]
    holders: dict[str, list[int]] = {}  # event id -> the batches it came in, in order
    for position, event in enumerate(combined):
        event_id = raw_id(event, "event_id")
        if event_id is not None:
            holders.setdefault(event_id, []).append(batch_at[position])
    reports = [BatchReport() for _ in batches]
    reports[0].users, reports[0].notes = whole.users, whole.notes

    def holder(event_id: str) -> int:
        queue = holders.get(event_id) or [0]
        return queue.pop(0) if len(queue) > 1 else queue[0]

    for kind in ("done", "pending", "duplicates"):
        for event_id in getattr(whole, kind):
            getattr(reports[holder(event_id)], kind).append(event_id)
    for error in whole.errors:
        position = int(error["position"])
        index = batch_at[position] if position >= 0 else holder(str(error["id"]))
        reports[index].errors.append({**error, "position": position - starts[index]
                                      if position >= 0 else position})
    return reports


def _store(
    services: Services, sources: Mapping[str, dict[str, Any]], positions: Mapping[str, int],
    report: BatchReport, refresh: bool,
) -> set[str]:
    """Create event documents; returns the ids created by this call."""
    index = services.settings.events_alias
    actions = ({"_op_type": "create", "_index": index, "_id": event_id, "_source": source}
               for event_id, source in sources.items())
    outcome = services.engine.bulk(actions, refresh=refresh, chunk_size=1000)
    report.duplicates += [item.id for item in outcome.conflicts]  # the same event sent twice
    # Stored as applied by this call: folded already, so a redelivery finds it done. (Not a
    # pending one: a fold of it that died before marking it applied must stay remembered.)
    services.stored_events.put_many({item.id: True for item in outcome.written
                                     if sources[item.id]["status"] == APPLIED})
    for item in outcome.missing + outcome.failed:
        report.error(positions.get(item.id, -1), item.id, item.reason)
    # Folded but not stored: the retried task stores them (the folds are remembered).
    outcome.raise_if_busy("events not stored")
    return {item.id for item in outcome.written}


def apply_pending_events(services: Services, doc_ids: Iterable[str]) -> int:
    """Fold the events that waited for these (now indexed) documents. Returns how many."""
    ids = sorted(set(doc_ids))
    applied = 0
    for start in range(0, len(ids), 1000):
        chunk = ids[start:start + 1000]
        query = {"query": {"bool": {"filter": [{"term": {"status": PENDING}},
                                               {"terms": {"doc_id": chunk}}]}}}
        waiting = [h["_source"] for h in
                   services.engine.scan(services.settings.events_alias, query)]
        if not waiting:
            continue
        docs: dict[str, DocVector] = fetch_doc_vectors(services, {w["doc_id"] for w in waiting})
        applied += len(_apply_stored(services, [w for w in waiting if w["doc_id"] in docs],
                                     docs))
    return applied


def _apply_stored(services: Services, sources: Sequence[Mapping[str, Any]],
                  docs: Mapping[str, DocVector], report: BatchReport | None = None
                  ) -> list[str]:
    """Fold stored pending events whose documents arrived, then mark them applied; returns
    the ids newly folded. Whichever call marks an event counts it."""
    applied = fold_into_users(services, sources, docs, report.users if report else None)
    moved = mark_applied(services, sources)
    _count_applied(services, [s for s in sources if s["event_id"] in moved])
    return applied


def _count_applied(services: Services, sources: Sequence[Mapping[str, Any]]) -> None:
    """Events this call made applied (stored, or marked) reach documents' popularity and the
    behaviour model's retraining count, once each."""
    popularity.fold_events(services, sources)
    behaviour.count_events(services, len(sources))


def stamp_applied(sources: Iterable[dict[str, Any]]) -> None:
    """Note on stored events when their fold reached the user, and how long after the API
    accepted them (the interest-update lag; Kibana's overview plots it)."""
    now_ms = int(time.time() * 1000)
    for source in sources:
        accepted = source.get("accepted_at") or source.get("received_at") or now_ms
        source["applied_at"] = now_ms
        source["update_lag_ms"] = max(0, now_ms - int(accepted))


def mark_applied(services: Services, sources: Sequence[Mapping[str, Any]]) -> set[str]:
    """Mark pending events (their stored sources) applied; returns the ids this call moved
    (the others were applied already: the engine answers ``noop`` for an update that changes
    nothing, which is why the status goes alone and the applied time after it)."""
    index = services.settings.events_alias
    moved = _update_events(services, ({"_op_type": "update", "_index": index,
                                       "_id": s["event_id"], "doc": {"status": APPLIED}}
                                      for s in sources))
    stamped = [dict(s) for s in sources if s["event_id"] in moved]
    stamp_applied(stamped)
    _update_events(services, ({"_op_type": "update", "_index": index, "_id": s["event_id"],
                               "doc": {"applied_at": s["applied_at"],
                                       "update_lag_ms": s["update_lag_ms"]}}
                              for s in stamped))
    return moved


def _update_events(services: Services, actions: Iterable[dict[str, Any]]) -> set[str]:
    outcome = services.engine.bulk(actions, chunk_size=1000)
    # The task is retried; folds already made are remembered, so none counts twice.
    outcome.raise_if_refused("events not marked applied")
    return {item.id for item in outcome.written if item.info.get("result") == "updated"}
