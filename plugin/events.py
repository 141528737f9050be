"""Validation of user interactions (events) and their signed weights."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from plugin.storable import MAX_ID_BYTES, storable_text

# Events stamped further ahead than this are rejected: a clock that far off is a bug upstream.
MAX_FUTURE_SKEW_S = 300.0
# A view's weight scales with dwell time around this many seconds, within these bounds.
DWELL_REFERENCE_S = 30.0
DWELL_SCALE_BOUNDS = (0.1, 3.0)
MAX_TEXT_CHARS = 10_000
# Far above any real signal, far below what float32 storage (3.4e38) or a sum could overflow.
MAX_ABS_WEIGHT = 1_000.0
MAX_DWELL_S = 86_400.0
# What an event may carry; anything else is dropped before it is queued.
FIELDS = ("event_id", "user_id", "doc_id", "type", "weight", "timestamp", "text", "dwell_s")
# A stored event's status: folded into its user, or waiting for its document to be indexed.
PENDING, APPLIED = "pending", "applied"


class InvalidEvent(ValueError):
    """An event that cannot be applied; the message says why."""


@dataclass(frozen=True)
class Event:
    event_id: str
    user_id: str
    type: str
    weight: float
    timestamp: float
    doc_id: str | None = None
    text: str | None = None
    dwell_s: float | None = None

    def source(self) -> dict[str, Any]:
        src: dict[str, Any] = {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "type": self.type,
            "weight": self.weight,
            # Whole milliseconds: stored sources are re-serialized by the engine on updates,
            # and a float in exponent notation would no longer parse as a date.
            "timestamp": round(self.timestamp * 1000),
        }
        for key in ("doc_id", "text", "dwell_s"):
            value = getattr(self, key)
            if value is not None:
                src[key] = value
        return src


def _timestamp(raw: Any) -> float:
    if raw is None:
        return time.time()
    if isinstance(raw, bool):
        raise InvalidEvent("'timestamp' must be epoch seconds or an ISO 8601 string")
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw)
        except ValueError:
            try:
                value = datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise InvalidEvent(
                    f"'timestamp' {raw!r} is neither epoch seconds nor ISO 8601"
                ) from None
    else:
        raise InvalidEvent("'timestamp' must be epoch seconds or an ISO 8601 string")
    if not math.isfinite(value) or value < 0:
        raise InvalidEvent(f"'timestamp' {raw!r} is not a valid time")
    # Millisecond resolution, the resolution it is stored with, so replays fold the same value.
    return round(value * 1000) / 1000


def known_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The event's fields this product reads; unknown ones never reach the queue."""
    return {key: raw[key] for key in FIELDS if key in raw}


def _number(raw: Any, name: str) -> float:
    if isinstance(raw, bool):
        raise InvalidEvent(f"'{name}' must be a number, got {raw!r}")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise InvalidEvent(f"'{name}' must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise InvalidEvent(f"'{name}' must be finite, got {raw!r}")
    return value


def derive_event_id(raw: Mapping[str, Any]) -> str:
    """A stable id for an event sent without one, so that a resend is still a duplicate."""
    fields = {k: raw.get(k) for k in ("user_id", "doc_id", "type", "timestamp", "text")}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
    return f"auto-{digest[:32]}"


def parse_event(
    raw: Mapping[str, Any], type_weights: Mapping[str, float], now: float | None = None
) -> Event:
    """Check one raw event and give it its signed weight.

    ``weight``, when present, replaces the type's default weight; ``dwell_s`` scales a view.
    """
    if not isinstance(raw, Mapping):
        raise InvalidEvent("an event must be a JSON object")
    user_id = raw.get("user_id")
    if user_id is None or str(user_id).strip() == "":
        raise InvalidEvent("missing 'user_id'")
    event_type = str(raw.get("type"))
    if event_type not in type_weights:
        known = ", ".join(sorted(type_weights))
        raise InvalidEvent(f"unknown event type {raw.get('type')!r} (known: {known})")
    storable_text(str(user_id), "user_id", InvalidEvent, MAX_ID_BYTES)
    weight = (
        type_weights[event_type] if raw.get("weight") is None else _number(raw["weight"], "weight")
    )
    if abs(weight) > MAX_ABS_WEIGHT:
        raise InvalidEvent(f"'weight' {weight:g} is out of range (at most ±{MAX_ABS_WEIGHT:g})")
    dwell = None if raw.get("dwell_s") is None else _number(raw["dwell_s"], "dwell_s")
    if dwell is not None:
        if not 0 <= dwell <= MAX_DWELL_S:
            raise InvalidEvent(f"'dwell_s' must be 0..{MAX_DWELL_S:g} seconds, got {dwell:g}")
        if event_type == "view":
            low, high = DWELL_SCALE_BOUNDS
            weight *= min(high, max(low, dwell / DWELL_REFERENCE_S))
    timestamp = _timestamp(raw.get("timestamp"))
    now = time.time() if now is None else now
    if timestamp > now + MAX_FUTURE_SKEW_S:
        raise InvalidEvent(
            f"'timestamp' is {timestamp - now:.0f} s in the future"
            f" (at most {MAX_FUTURE_SKEW_S:.0f} s)"
        )
    doc_id = raw.get("doc_id")
    doc_id = None if doc_id is None or str(doc_id) == "" else str(doc_id)
    if doc_id is not None:
        storable_text(doc_id, "doc_id", InvalidEvent, MAX_ID_BYTES)
    text = raw.get("text")
    if text is not None:
        if not isinstance(text, str):
            raise InvalidEvent("'text' must be a string")
        storable_text(text, "text", InvalidEvent)
        text = text.strip() or None
        if text is not None and len(text) > MAX_TEXT_CHARS:
            raise InvalidEvent(f"'text' is longer than {MAX_TEXT_CHARS} characters")
    if doc_id is None and text is None:
        raise InvalidEvent("an event needs a 'doc_id' or a 'text' (a query, a comment)")
    event_id = raw.get("event_id")
    event_id = derive_event_id(raw) if event_id is None or str(event_id) == "" else str(event_id)
    storable_text(event_id, "event_id", InvalidEvent, MAX_ID_BYTES)
    return Event(event_id, str(user_id), str(event_type), weight, timestamp, doc_id, text, dwell)


def applied_events_query(before_ms: int | None = None) -> dict[str, Any]:
    """The applied events on documents; with ``before_ms``, those before that time only (the
    log as it stood then: a backtest learns from the past alone)."""
    filters: list[dict[str, Any]] = [{"term": {"status": APPLIED}},
                                     {"exists": {"field": "doc_id"}}]
    if before_ms is not None:
        filters.append({"range": {"timestamp": {"lt": before_ms}}})
    return {"bool": {"filter": filters}}


def positive_sequences_of(events: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Per user, the documents whose events (``user_id``, ``doc_id``, signed ``weight``,
    ``timestamp``) sum to a positive weight, in the time of their first interaction."""
    total: dict[tuple[str, str], float] = {}
    first: dict[tuple[str, str], int] = {}
    for event in events:
        key = (str(event["user_id"]), str(event["doc_id"]))
        total[key] = total.get(key, 0.0) + float(event["weight"])
        first[key] = min(first.get(key, int(event["timestamp"])), int(event["timestamp"]))
    out: dict[str, list[str]] = {}
    for user, doc in sorted((k for k, w in total.items() if w > 0),
                            key=lambda k: (k[0], first[k], k[1])):
        out.setdefault(user, []).append(doc)
    return out
