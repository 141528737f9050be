"""Per-user interest documents: fold with optimistic concurrency, rebuild, erase."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from plugin import dead_letter
from plugin.caches import forget_users, note_user_writes, stale_users
from plugin.celery_app import scrub_results
from plugin.events import APPLIED
from plugin.interest import RECENT_WINDOW_S, DocVector, UserInterest, fold_events
from plugin.pipeline.doc_vectors import fetch_doc_vectors
from plugin.services import Services

MAX_UPDATE_ATTEMPTS = 30
# How often a rebuild waits for an event that was folded but whose write is still in flight.
REBUILD_WAIT_TRIES, REBUILD_WAIT_S = 20, 0.1


class EventsInFlight(RuntimeError):
    """The user's document counts events whose store has not happened yet (a batch waiting
    for its retry or redelivery): the log is incomplete, so a rebuild must wait."""


class ConcurrentUpdateError(RuntimeError):
    """A user's interest document kept changing under us; the task is retried."""


def update_users(
    services: Services, events_by_user: Mapping[str, Sequence[Mapping[str, Any]]],
    docs: Mapping[str, DocVector], counts: Counter[str] | None = None,
) -> list[str]:
    """Fold stored events into their users' documents; returns the event ids applied.
    ``counts`` (when given) adds the users ``read`` from the engine, ``written`` and
    ``refused`` (a write another writer beat).

    Users come from this process's cache unless another process wrote them since (its version
    hint in Redis says so); one real-time mget reads the others with ``_seq_no``/``_primary_term``;
    one bulk writes them back only where nobody wrote in between (``create`` for a new user).
    Users whose write lost the race are read and folded again, so no update is lost. A user's
    document remembers the ids it applied recently, so an event folded twice (a redelivered
    task, a rebuild racing this) counts once.
    """
    settings = services.settings
    engine = services.engine
    todo = dict(events_by_user)
    applied: list[str] = []
    counts = Counter() if counts is None else counts
    for _ in range(MAX_UPDATE_ATTEMPTS):
        if not todo:
            return applied
        current = services.user_states.get_many(todo)
        # Another worker process wrote these since this one cached them: read them afresh
        # rather than send a write the engine would refuse.
        cached = {u: (c[1], c[2]) for u, c in current.items()}
        for user_id in stale_users(services.redis, services.settings, cached):
            del current[user_id]
            services.user_states.discard(user_id)
        missing = [u for u in todo if u not in current]
        counts["read"] += len(missing)
        # The whole source: filtering it out in the engine (a v1 document's unit vectors)
        # costs the engine more than the read itself; the reader ignores them.
        for user_id, (source, seq_no, term) in engine.mget_versioned(
                settings.interests_alias, missing).items():
            current[user_id] = (UserInterest.from_source(source), seq_no, term)
        now = time.time()
        actions, applied_by_user, written = [], {}, {}
        for user_id, events in todo.items():
            found = current.get(user_id)
            if found is not None and found[0].recent:
                found = (_forget_stored(services, found[0], now), found[1], found[2])
            user, ids = fold_events(found[0] if found else None, user_id, events, docs,
                                    settings.half_life_long_s, settings.half_life_short_s, now,
                                    content_version=services.content_model().version)
            if not ids or user is None:
                continue
            action: dict[str, Any] = {"_index": settings.interests_alias, "_id": user_id,
                                      "_source": user.to_source(now)}
            if found is None:
                action["_op_type"] = "create"
            else:
                action.update(_op_type="index", if_seq_no=found[1], if_primary_term=found[2])
            actions.append(action)
            applied_by_user[user_id] = ids
            written[user_id] = user
        versions: dict[str, tuple[int, int]] = {}
        try:
            outcome = engine.bulk(actions)
            counts["written"] += len(outcome.written)
            counts["refused"] += len(outcome.conflicts)
            for item in outcome.written:
                applied += applied_by_user[item.id]
                versions[item.id] = int(item.info["_seq_no"]), int(item.info["_primary_term"])
                services.user_states.put(item.id, (written[item.id], *versions[item.id]))
        finally:
            # Also when the engine refused part of the bulk: what it took is written.
            note_user_writes(services.redis, services.settings, list(applied_by_user), versions)
        # Another writer (worker, rebuild, erase) got there first: read those afresh.
        for item in outcome.conflicts:
            services.user_states.discard(item.id)
        outcome.raise_if_refused("users' interests not written", handled=[409])
        todo = {item.id: todo[item.id] for item in outcome.conflicts}
    raise ConcurrentUpdateError(f"users' interests kept changing ({MAX_UPDATE_ATTEMPTS} tries)")


def _forget_stored(services: Services, user: UserInterest, now: float) -> UserInterest:
    """The user without the remembered ids of events this process stored as applied, once
    no task that could still fold them again is running: an id is there to count an event
    once until its store (a redelivery finds a stored one in the log), or while a task that
    read the log before that store may still fold (none outlives the visibility timeout),
    and each id costs the user's every write. An owner stored nearly all of them itself."""
    settled = now - services.settings.task_visibility_s
    old = [k for k, at in user.recent.items() if at < settled]
    stored = services.stored_events.get_many(old) if old else {}
    if not stored:
        return user
    return replace(user, recent={k: v for k, v in user.recent.items() if k not in stored})


def fold_into_users(
    services: Services, events: Sequence[Mapping[str, Any]], docs: Mapping[str, DocVector],
    counts: Counter[str] | None = None,
) -> list[str]:
    """Group events by user and fold each group; returns the ids newly applied."""
    by_user: dict[str, list[Mapping[str, Any]]] = {}
    for event in events:
        by_user.setdefault(event["user_id"], []).append(event)
    return update_users(services, by_user, docs, counts)


# -- rebuild -----------------------------------------------------------------------------------


REBUILD_BATCH = 500


def _applied_events(services: Services, user_ids: Sequence[str],
                    current: Mapping[str, UserInterest]) -> dict[str, list[dict[str, Any]] | None]:
    """Each user's applied events, or None for a user whose log is not complete yet.

    An event is folded before it is written, so a user document can remember an id whose
    write is still in flight; the log is complete once each remembered id can be read.
    """
    index = services.settings.events_alias
    engine = services.engine
    engine.refresh(index)
    query = {"query": {"bool": {"filter": [{"terms": {"user_id": list(user_ids)}},
                                           {"term": {"status": APPLIED}}]}}}
    events: dict[str, dict[str, dict[str, Any]]] = {u: {} for u in user_ids}
    for hit in engine.scan(index, query):
        events.setdefault(str(hit["_source"]["user_id"]), {})[hit["_id"]] = hit["_source"]
    unseen = {u: [i for i in user.recent if i not in events.get(u, {})]
              for u, user in current.items()}
    found = engine.mget_versioned(index, [i for ids in unseen.values() for i in ids])
    out: dict[str, list[dict[str, Any]] | None] = {}
    for user_id in user_ids:
        missing = unseen.get(user_id, [])
        if any(i not in found for i in missing):
            out[user_id] = None
            continue
        for event_id in missing:
            if found[event_id][0].get("status") == APPLIED:
                events[user_id][event_id] = found[event_id][0]
        out[user_id] = list(events[user_id].values())
    return out


def rebuild_users(services: Services, user_ids: Sequence[str]) -> dict[str, Any]:
    """Replay each user's event log in time order into a fresh state, and store it: a batch
    at a time (one refresh, one scan, one read of the documents' vectors, one bulk write).

    Returns ``rebuilt`` and ``removed`` (users without usable events) counts, ``events``,
    ``skipped`` (events whose document is gone) and ``deferred``: users whose log is not
    complete yet (an event they count is still being stored); rebuild those again later.
    """
    settings = services.settings
    engine = services.engine
    result: dict[str, Any] = {"rebuilt": 0, "removed": 0, "events": 0, "skipped": 0,
                              "deferred": []}
    todo = list(dict.fromkeys(user_ids))
    for user_id in todo:
        services.user_states.discard(user_id)
    for attempt in range(MAX_UPDATE_ATTEMPTS):
        if not todo:
            return result
        versions = engine.mget_versioned(settings.interests_alias, todo)
        current = {u: UserInterest.from_source(src) for u, (src, _, _) in versions.items()}
        logs = _applied_events(services, todo, current)
        # Users whose events are still being stored are read again shortly, alone; after
        # REBUILD_WAIT_TRIES they are deferred. The others are rebuilt now.
        waiting = [u for u, log in logs.items() if log is None]
        if attempt >= REBUILD_WAIT_TRIES:
            result["deferred"] += waiting
            waiting = []
        complete = {u: log for u, log in logs.items() if log is not None}
        docs = fetch_doc_vectors(services, {e["doc_id"] for log in complete.values()
                                            for e in log if e.get("doc_id")}, fresh=True)
        now = time.time()
        cutoff_ms = (now - RECENT_WINDOW_S) * 1000
        actions: list[dict[str, Any]] = []
        for user_id, log in complete.items():
            events = sorted(log, key=lambda e: (int(e["timestamp"]), e["event_id"]))
            usable = [e for e in events if e.get("doc_id") is None or e["doc_id"] in docs]
            result["skipped"] += len(events) - len(usable)
            action: dict[str, Any] = {"_index": settings.interests_alias, "_id": user_id}
            if user_id in versions:
                action.update(if_seq_no=versions[user_id][1],
                              if_primary_term=versions[user_id][2])
            user, _ = fold_events(None, user_id, usable, docs, settings.half_life_long_s,
                                  settings.half_life_short_s, now,
                                  content_version=services.content_model().version)
            if user is None:  # no usable event left: nothing left of the user
                if user_id in versions:
                    actions.append({**action, "_op_type": "delete"})
                continue
            # Remember only ids that an in-flight task could still try to apply.
            user = replace(user, recent={e["event_id"]: now for e in usable
                                         if e.get("received_at", 0) >= cutoff_ms})
            actions.append({**action, "_source": user.to_source(now),
                            "_op_type": "index" if user_id in versions else "create"})
            result["events"] += len(usable)
        outcome = engine.bulk(actions)
        outcome.raise_if_refused("rebuilt interests not written", handled=[409])
        for item in outcome.written:
            result["removed" if item.op == "delete" else "rebuilt"] += 1
        # A worker folded an event meanwhile: replay those again.
        retry = [item.id for item in outcome.conflicts]
        forget_users(services.redis, services.settings, [u for u in complete if u not in retry])
        todo = retry + waiting
        if waiting:
            time.sleep(REBUILD_WAIT_S)
    if not todo:
        return result
    raise ConcurrentUpdateError(f"users' interests kept changing ({MAX_UPDATE_ATTEMPTS} tries)")


def rebuild_user(services: Services, user_id: str) -> dict[str, Any]:
    """Replay one user's event log into a fresh state (``rebuild_users`` for one)."""
    result = rebuild_users(services, [user_id])
    if result["deferred"]:
        raise EventsInFlight("the user counts events not stored yet (a batch awaits "
                             "its retry or redelivery); rebuild it again later")
    return {"user_id": user_id, "events": result["events"], "skipped": result["skipped"]}


def all_user_ids(services: Services) -> Iterable[str]:
    """Every user with events, by composite aggregation pages."""
    after: dict[str, Any] | None = None
    while True:
        composite: dict[str, Any] = {"size": 1000,
                                     "sources": [{"user": {"terms": {"field": "user_id"}}}]}
        if after:
            composite["after"] = after
        response = services.engine.search(services.settings.events_alias,
                                          {"size": 0, "aggs": {"users": {"composite": composite}}})
        agg = response["aggregations"]["users"]
        for bucket in agg["buckets"]:
            yield str(bucket["key"]["user"])
        after = agg.get("after_key")
        if not after or not agg["buckets"]:
            return


def user_batches(services: Services, size: int = REBUILD_BATCH) -> Iterable[list[str]]:
    """Every user with events, ``size`` at a time."""
    batch: list[str] = []
    for user_id in all_user_ids(services):
        batch.append(user_id)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def rebuild_all(
    services: Services, progress: Callable[[int], None] | None = None
) -> tuple[int, list[str]]:
    """Rebuild every user, a batch at a time; returns how many were rebuilt and the ids
    deferred because events of theirs are still in flight (rebuild those again later).
    ``progress`` gets the number of users each batch handled."""
    count, deferred = 0, []
    for batch in user_batches(services):
        result = rebuild_users(services, batch)
        count += result["rebuilt"] + result["removed"]
        deferred += result["deferred"]
        if progress:
            progress(len(batch))
    return count, deferred


def erase_user(services: Services, user_id: str,
               erased_at_ms: int | None = None) -> dict[str, Any]:
    """Forget a user up to ``erased_at_ms`` (default: now): every event of theirs that
    happened or was accepted by then, their interest state, their cached vectors, their
    events in dead letters and in stored task results.

    A tombstone with the erase time stays in Redis for ES_INTEREST_ERASE_TOMBSTONE_DAYS, and
    workers drop any later-arriving event it covers (one queued during the erase, a retried
    batch), so the user does not come back. Events that happened and were accepted after the
    erase are a new history and are kept. Running it again with the same time finishes what a
    batch in flight during the first run left (the API queues that run for after the
    visibility timeout). Scan and bulk delete rather than _delete_by_query, which lives in a
    module (reindex) that not every engine build has.
    """
    settings = services.settings
    engine = services.engine
    erased_at_ms = int(time.time() * 1000) if erased_at_ms is None else erased_at_ms
    tombstone = settings.redis_key("erased", user_id)
    services.redis.set(tombstone, max(erased_at_ms, _erased_at(services, [user_id]).get(
        user_id, 0)), ex=max(1, int(settings.erase_tombstone_s)))
    services.user_states.discard(user_id)
    engine.refresh(settings.events_alias)
    covered = {"bool": {"filter": [{"term": {"user_id": user_id}}], "minimum_should_match": 1,
                        "should": [{"range": {"timestamp": {"lte": erased_at_ms}}},
                                   {"range": {"accepted_at": {"lte": erased_at_ms}}}]}}
    hits = list(engine.scan(settings.events_alias, {"query": covered, "_source": False}))
    actions = ({"_op_type": "delete", "_index": h["_index"], "_id": h["_id"]} for h in hits)
    deleted = len(engine.bulk(actions, refresh=True).written)
    found = engine.delete(settings.interests_alias, user_id, refresh=True)
    kept = engine.count(settings.events_alias, {"term": {"user_id": user_id}})
    if kept:  # events after the erase: the user's new history, folded from the log alone
        rebuild_users(services, [user_id])
    forget_users(services.redis, services.settings, [user_id])
    letters = dead_letter.drop_user(services.celery, user_id)
    results = scrub_results(services.celery, services.redis, {str(h["_id"]) for h in hits})
    return {"events": deleted, "interests": int(found), "events_kept": int(kept),
            "dead_letters": letters, "task_results": results, "erased_at_ms": erased_at_ms}


def _erased_at(services: Services, user_ids: Sequence[str]) -> dict[str, int]:
    """The erase time (epoch ms) of each of these users that has a tombstone."""
    ids = list(user_ids)
    if not ids:
        return {}
    raw = services.redis.mget([services.settings.redis_key("erased", u) for u in ids])
    return {u: int(v) for u, v in zip(ids, raw, strict=True) if v is not None}


def erased_events(services: Services, sources: Sequence[Mapping[str, Any]]) -> set[str]:
    """Ids of the events (stored sources: ``timestamp`` and ``accepted_at`` in ms) that an
    erase of their user covers."""
    erased = _erased_at(services, sorted({str(s["user_id"]) for s in sources}))
    return {str(s["event_id"]) for s in sources if str(s["user_id"]) in erased and min(
        int(s["timestamp"]), int(s.get("accepted_at", s["timestamp"])))
        <= erased[str(s["user_id"])]}
