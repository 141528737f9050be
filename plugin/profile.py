"""What the layer knows of one user, for people to read: the documents nearest to each of their
vectors, their recent events, and how their interest moved (replayed from the event log).

Read by ``GET /users/<id>/interest`` and the inspector page (``/ui/``). The history is the
rebuild's replay (DESIGN.md, Interest model) with a snapshot every few events, so what it plots
is what the pipeline computed, not an approximation of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from plugin.documents import BEHAVIOUR_FIELD
from plugin.events import APPLIED
from plugin.interest import DocVector, HorizonState, UserInterest, fold_events, interest_vector
from plugin.pipeline.doc_vectors import fetch_doc_vectors
from plugin.search import behaviour_support, behaviour_version
from plugin.services import Services

NEAREST = 5
RECENT = 10
# Snapshots plotted at most: enough to see a drift, few enough to draw on a page.
HISTORY_POINTS = 60
# Events replayed at most for the plot (the newest ones): a page must not scan a huge log.
HISTORY_EVENTS = 5000

Vector = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Snapshot:
    """A user's unit vectors right after their ``events``-th event (at ``timestamp``)."""

    timestamp: float
    events: int
    long: Vector | None
    short: Vector | None


@dataclass(frozen=True)
class Drift:
    """How the interest moved: per snapshot, the cosine to the one before it (long horizon)
    and to the newest snapshot (both horizons), and the long vectors projected to 2-D."""

    snapshots: list[Snapshot]
    long_step: list[float | None]
    long_to_latest: list[float | None]
    short_to_latest: list[float | None]
    path: list[tuple[float, float] | None]
    explained: float  # share of the long vectors' variance the 2-D projection keeps


def _unit(state: HorizonState) -> Vector | None:
    vector = interest_vector(state)
    return None if vector is None else vector.astype(np.float64)


def snapshots(events: Sequence[Mapping[str, Any]], docs: Mapping[str, DocVector],
              half_life_long_s: float, half_life_short_s: float,
              points: int = HISTORY_POINTS) -> list[Snapshot]:
    """Fold stored events (in time order, their documents in ``docs``) as a rebuild does, and
    keep ``points`` snapshots, evenly spaced over the events and always ending with the last."""
    total = len(events)
    taking = min(points, total)
    keep = {total - 1 - round(i * (total - 1) / max(1, taking - 1)) for i in range(taking)}
    taken: list[Snapshot] = []
    folded = 0

    def take(event: Mapping[str, Any], user: UserInterest) -> None:
        nonlocal folded
        if folded in keep:
            taken.append(Snapshot(int(event["timestamp"]) / 1000.0, folded + 1,
                                  _unit(user.long), _unit(user.short)))
        folded += 1

    fold_events(None, "history", events, docs, half_life_long_s, half_life_short_s, 0.0,
                after_each=take)
    return taken


def _cosine(a: Vector | None, b: Vector | None) -> float | None:
    if a is None or b is None:
        return None
    return round(float(np.dot(a, b)), 6)  # both unit vectors


def drift(taken: Sequence[Snapshot]) -> Drift:
    """Similarities between snapshots and a 2-D projection (PCA) of the long vectors."""
    latest_long = next((s.long for s in reversed(taken) if s.long is not None), None)
    latest_short = next((s.short for s in reversed(taken) if s.short is not None), None)
    step: list[float | None] = []
    previous: Vector | None = None
    for snap in taken:
        step.append(_cosine(previous, snap.long))
        previous = snap.long if snap.long is not None else previous
    present = [s.long for s in taken if s.long is not None]
    path: list[tuple[float, float] | None] = [None] * len(taken)
    explained = 0.0
    if len(present) >= 2:
        matrix = np.vstack(present)
        centred = matrix - matrix.mean(axis=0)
        _, singular, axes = np.linalg.svd(centred, full_matrices=False)
        total = float(np.sum(singular ** 2))
        explained = float(np.sum(singular[:2] ** 2) / total) if total > 0 else 1.0
        coords = centred @ axes[:2].T
        if coords.shape[1] == 1:  # every snapshot on one line
            coords = np.hstack([coords, np.zeros_like(coords)])
        rows = iter(coords.tolist())
        for i, snap in enumerate(taken):
            if snap.long is not None:
                x, y = next(rows)
                path[i] = (x, y)
    return Drift(list(taken), step, [_cosine(s.long, latest_long) for s in taken],
                 [_cosine(s.short, latest_short) for s in taken], path, explained)


def interest_history(services: Services, user_id: str, points: int = HISTORY_POINTS,
                     max_events: int = HISTORY_EVENTS) -> Drift:
    """Replay the user's newest ``max_events`` applied events and say how the vectors moved."""
    settings = services.settings
    response = services.engine.search(settings.events_alias, {
        "size": max_events, "sort": [{"timestamp": "desc"}, {"event_id": "asc"}],
        "query": {"bool": {"filter": [{"term": {"user_id": user_id}},
                                      {"term": {"status": APPLIED}}]}},
        "_source": ["event_id", "doc_id", "type", "weight", "timestamp", "text_embedding"]})
    events = sorted((h["_source"] for h in response["hits"]["hits"]),
                    key=lambda e: (int(e["timestamp"]), e["event_id"]))
    docs = fetch_doc_vectors(services, {e["doc_id"] for e in events if e.get("doc_id")})
    usable = [e for e in events if e.get("doc_id") is None or e["doc_id"] in docs]
    return drift(snapshots(usable, docs, settings.half_life_long_s, settings.half_life_short_s,
                           points))


def nearest_documents(services: Services, field_name: str, vector: Sequence[float],
                      k: int = NEAREST) -> list[dict[str, Any]]:
    """The ``k`` documents whose ``field_name`` vector is nearest, with their similarity."""
    body: dict[str, Any] = {"size": k, "_source": ["title", "tags"]}
    services.engine.add_knn(body, field_name=field_name, vector=vector, k=k,
                            num_candidates=10 * k)
    hits = services.engine.search(services.settings.docs_alias, body)["hits"]["hits"]
    return [{"id": h["_id"], "title": h["_source"].get("title"),
             "tags": h["_source"].get("tags", []), "score": h["_score"]} for h in hits]


def _horizon(services: Services, state: HorizonState | None, field_name: str,
             nearest: int) -> dict[str, Any]:
    vector = None if state is None else interest_vector(state)
    entry: dict[str, Any] = {"present": vector is not None}
    if state is not None:
        entry.update(weight=round(state.weight, 6), net=round(state.net, 6),
                     sum_norm=round(float(np.linalg.norm(state.vector_sum)), 6))
    if vector is not None:
        entry["nearest"] = nearest_documents(services, field_name, vector.tolist(), nearest)
    return entry


def _titles(services: Services, doc_ids: set[str]) -> dict[str, str | None]:
    if not doc_ids:
        return {}
    found = services.engine.mget_sources(services.settings.docs_alias, sorted(doc_ids), ["title"])
    return {doc_id: source.get("title") for doc_id, source in found.items()}


def describe_user(services: Services, user_id: str, nearest: int = NEAREST,
                  recent: int = RECENT) -> dict[str, Any] | None:
    """The user's interest document summarized, or None when the user has none."""
    settings, engine = services.settings, services.engine
    found = engine.get_versioned(settings.interests_alias, user_id)
    if found is None:
        return None
    source: Mapping[str, Any] = found[0]
    user = UserInterest.from_source(source)
    model = services.content_model().version
    # Content sums folded with another model (a switch's re-fold is under way): no neighbours.
    horizons = {name: {**_horizon(services, state if user.content_version == model else None,
                                  "embedding", nearest),
                       "version": user.content_version, "current_version": model}
                for name, state in (("long", user.long), ("short", user.short))}
    current = behaviour_version(services)
    support = behaviour_support(services)
    # A behaviour vector of another training run lives in another space: no neighbours there.
    for name, state in (("behaviour", user.behaviour), ("behaviour_short", user.behaviour_short)):
        usable = state if user.behaviour_version == current else None
        horizons[name] = {**_horizon(services, usable, BEHAVIOUR_FIELD, nearest),
                          "version": user.behaviour_version, "current_version": current,
                          "support": support}
    events = engine.search(settings.events_alias, {
        "size": recent, "sort": [{"timestamp": "desc"}], "query": {"term": {"user_id": user_id}},
        "_source": ["event_id", "type", "doc_id", "weight", "timestamp", "status"]})
    recent_events = [h["_source"] for h in events["hits"]["hits"]]
    titles = _titles(services, {e["doc_id"] for e in recent_events if e.get("doc_id")})
    for event in recent_events:
        if event.get("doc_id"):
            event["title"] = titles.get(event["doc_id"])
    return {
        "user_id": user_id,
        "event_counts": source.get("event_counts", {}),
        "last_event_at": source.get("last_event_at"),
        "updated_at": source.get("updated_at"),
        "top_tags": source.get("top_tags", []),
        "horizons": horizons,
        "recent_events": recent_events,
    }
