"""`es-interest inspect`: the indices as eland DataFrames, summarized for an operator.

eland runs its work in the engine (aggregations, filtered counts); only small results come
back as pandas frames. eland speaks to Elasticsearch only.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import pandas as pd

from plugin.config import Settings
from plugin.engine import Engine

TOP = 10


class InspectionUnavailable(RuntimeError):
    """The engine is one eland cannot read (OpenSearch)."""


def _frame(engine: Engine, index: str, columns: list[str]) -> Any:
    if not engine.eland_readable:
        raise InspectionUnavailable(
            f"eland reads Elasticsearch only; this is {engine.kind.value} {engine.version}")
    import eland as ed

    with warnings.catch_warnings():
        # eland 8.x warns on a 9.x server; the calls used here work on both.
        warnings.simplefilter("ignore", UserWarning)
        return ed.DataFrame(engine.client, es_index_pattern=index, columns=columns)


def users(engine: Engine, settings: Settings, top: int = TOP) -> dict[str, pd.DataFrame]:
    """How many users have vectors, and the most stale of them (days since their last event,
    and since their document was last written)."""
    frame = _frame(engine, settings.interests_alias,
                   ["user_id", "event_count", "last_event_at", "updated_at", "weight_long",
                    "weight_short"])
    with_long, with_short = (frame.es_query({"bool": {"should": [
        {"term": {"vectors": name}},
        {"exists": {"field": f"interest_{name}"}},  # documents written under mapping v1
    ]}}) for name in ("long", "short"))
    summary = pd.DataFrame({"users": [frame.shape[0]], "with long-term vector":
                            [with_long.shape[0]], "with short-term vector": [with_short.shape[0]]})
    # eland has no server-side sort: the oldest `top` come from one sorted search.
    fields = ["user_id", "event_count", "last_event_at", "updated_at"]
    hits = engine.search(settings.interests_alias, {
        "size": top, "_source": fields, "sort": [{"last_event_at": "asc"}]})["hits"]["hits"]
    stale = pd.DataFrame([h["_source"] for h in hits], columns=fields)
    stale["last_event_at"] = pd.to_datetime(stale["last_event_at"], unit="ms")
    stale["updated_at"] = pd.to_datetime(stale["updated_at"], unit="ms")
    now = pd.Timestamp(time.time(), unit="s")
    stale["days since last event"] = ((now - stale["last_event_at"]).dt.total_seconds()
                                      / 86400).round(2)
    stale["days since written"] = ((now - stale["updated_at"]).dt.total_seconds()
                                   / 86400).round(2)
    return {"summary": summary, "most stale": stale.reset_index(drop=True)}


def events(engine: Engine, settings: Settings, top: int = TOP) -> dict[str, pd.DataFrame]:
    """Events per type and status (applied, pending) and the most active users."""
    frame = _frame(engine, settings.events_alias, ["type", "status", "weight", "user_id"])
    per_type = frame.groupby(["type", "status"]).agg(["count"])["weight"]["count"]
    by_status = per_type.to_pandas() if hasattr(per_type, "to_pandas") else per_type
    active = frame["user_id"].value_counts(es_size=top)
    return {"per type and status": by_status.rename("events").reset_index(),
            "most active users": active.rename("events").rename_axis("user_id").reset_index()}


def documents(engine: Engine, settings: Settings, top: int = TOP) -> dict[str, pd.DataFrame]:
    """Documents without embeddings, and the most interacted documents."""
    docs = _frame(engine, settings.docs_alias, ["doc_id", "title", "indexed_at"])
    missing = docs.es_query({"bool": {"must_not": {"exists": {"field": "embedding"}}}})
    summary = pd.DataFrame({"documents": [docs.shape[0]],
                            "without embedding": [missing.shape[0]]})
    counted = _frame(engine, settings.events_alias, ["doc_id"])["doc_id"].value_counts(
        es_size=top)
    return {"summary": summary, "without embedding": missing.head(top).to_pandas(),
            "most interacted": counted.rename("events").rename_axis("doc_id").reset_index()}


REPORTS = {"users": users, "events": events, "documents": documents}
