"""The interest model (DESIGN.md): decayed sums per horizon, exact under any arrival order.

For one user and one horizon with half-life h, at reference time T (the latest event seen)::

    S(T) = sum_i w_i * 2^(-(T - t_i)/h) * emb_i     (the direction)
    W(T) = sum_i |w_i| * 2^(-(T - t_i)/h)           (how much evidence)
    N(T) = sum_i w_i * 2^(-(T - t_i)/h)             (net sign of the evidence)

All three are linear in the events, so folding events one by one in any order gives the same
state as a replay in time order. Pure functions only: no engine, no model.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# A direction backed by less than this fraction of its evidence is noise (e.g. a like and a
# dislike of the same item): treat it as absent.
MIN_RELATIVE_NORM = 1e-3


def behaviour_for_fold(vector: npt.ArrayLike) -> FloatArray:
    """A document's behaviour vector as it enters a user's: without the space's last
    dimension, which a learned vector leaves at 0 and a vector mapped from text fills with
    its doubt (plugin/pipeline/behaviour.py). No user has it, so a mapped document's
    similarity to any user is its confidence times that of its mapped direction, and it
    adds that much less to the users who interact with it."""
    out = np.array(vector, dtype=np.float64)
    out[-1] = 0.0
    return out


@dataclass(frozen=True)
class DocVector:
    """What a fold needs of an indexed document: its embedding and its tags."""

    embedding: npt.ArrayLike
    tags: tuple[str, ...]
    # Its behaviour (collaborative) vector and the training run that made it, if it has one.
    behaviour: npt.ArrayLike | None = None
    behaviour_version: str | None = None


@dataclass(frozen=True)
class HorizonState:
    """Unnormalized decayed sums of one horizon at reference time ``ref_time`` (epoch s)."""

    vector_sum: FloatArray
    weight: float
    net: float
    ref_time: float

    @classmethod
    def empty(cls, dims: int) -> HorizonState:
        return cls(np.zeros(dims, dtype=np.float64), 0.0, 0.0, -math.inf)

    @property
    def is_empty(self) -> bool:
        return self.ref_time == -math.inf

    def to_json(self) -> dict[str, Any]:
        return {
            # float64 bytes in base64: exact, and a fraction of the JSON cost of a list.
            "sum": base64.b64encode(self.vector_sum.astype("<f8").tobytes()).decode("ascii"),
            "weight": self.weight,
            "net": self.net,
            "ref_time": None if self.is_empty else self.ref_time,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HorizonState:
        ref = data.get("ref_time")
        raw = data["sum"]
        # Read-only, uncopied where float64 is little-endian: a fold makes new arrays.
        vector_sum = (np.frombuffer(base64.b64decode(raw), dtype="<f8").astype(np.float64,
                                                                              copy=False)
                      if isinstance(raw, str) else np.asarray(raw, dtype=np.float64))
        return cls(
            vector_sum,
            float(data["weight"]),
            float(data.get("net", 0.0)),
            -math.inf if ref is None else float(ref),
        )


def decay_factor(elapsed_s: float, half_life_s: float) -> float:
    return float(2.0 ** (-elapsed_s / half_life_s))


def fold(
    state: HorizonState,
    *,
    timestamp: float,
    weight: float,
    embedding: npt.ArrayLike,
    half_life_s: float,
) -> HorizonState:
    """Add one event (signed ``weight`` at ``timestamp``) to a horizon's state."""
    emb = np.asarray(embedding, dtype=np.float64)
    if not np.isfinite(emb).all() or not math.isfinite(weight) or not math.isfinite(timestamp):
        raise ValueError("event embedding, weight and timestamp must be finite")
    if state.is_empty:
        return HorizonState(weight * emb, abs(weight), weight, timestamp)
    if timestamp >= state.ref_time:
        # Move the reference forward: everything seen so far decays by the elapsed time.
        f = decay_factor(timestamp - state.ref_time, half_life_s)
        return HorizonState(
            state.vector_sum * f + weight * emb,
            state.weight * f + abs(weight),
            state.net * f + weight,
            timestamp,
        )
    # Late event: it enters already decayed to the reference time, which stays.
    f = decay_factor(state.ref_time - timestamp, half_life_s)
    return HorizonState(
        state.vector_sum + (weight * f) * emb,
        state.weight + abs(weight) * f,
        state.net + weight * f,
        state.ref_time,
    )


def interest_vector(state: HorizonState) -> npt.NDArray[np.float32] | None:
    """The unit interest vector, or None when there is no positive interest to show.

    Negative feedback subtracts from the sum, so the direction is what the user liked less
    what they disliked. A horizon with no positive evidence would point only *away* from what
    the user touched, which says nothing about what they want, so it is absent.
    """
    norm = _direction_norm(state)
    return None if norm is None else (state.vector_sum / norm).astype(np.float32)


def _direction_norm(state: HorizonState) -> float | None:
    """The sum's norm where it is a direction worth showing (see ``interest_vector``)."""
    # weight + net is twice the positive mass (DESIGN.md): the liked side of the evidence.
    if state.is_empty or state.weight + state.net <= 2.0 * MIN_RELATIVE_NORM * state.weight:
        return None
    norm = float(np.linalg.norm(state.vector_sum))
    if not math.isfinite(norm) or norm <= MIN_RELATIVE_NORM * state.weight:
        return None
    return norm


def replay(
    events: Iterable[tuple[float, float, npt.ArrayLike]], dims: int, half_life_s: float
) -> HorizonState:
    """Fold (timestamp, weight, embedding) events in time order: the exact rebuild."""
    state = HorizonState.empty(dims)
    for timestamp, weight, embedding in sorted(events, key=lambda e: e[0]):
        state = fold(state, timestamp=timestamp, weight=weight, embedding=embedding,
                     half_life_s=half_life_s)
    return state


# -- one user's whole interest document --------------------------------------------------------

TOP_TAGS = 20
# Tag scores are for people reading the index (Kibana), not for ranking: keep a bounded few.
TAG_SCORES_KEPT = 100
# How long an applied event's id is remembered, so that a redelivered task or a rebuild racing
# an in-flight update cannot fold it twice. Far longer than a task's lifetime with retries.
RECENT_WINDOW_S = 3600.0
# How many of the documents a user interacted with positively the state keeps (the most
# recent): the search holds these neutral in the personal terms (plugin/strategies.py), so the
# boost goes to documents the user has not seen yet.
SEEN_KEPT = 300


@dataclass(frozen=True)
class Contribution:
    """One embedding an event adds: a document it touched, or the text it carried."""

    timestamp: float
    weight: float
    embedding: npt.ArrayLike
    event_type: str
    tags: tuple[str, ...] = ()
    behaviour: npt.ArrayLike | None = None
    behaviour_version: str | None = None


@dataclass(frozen=True)
class UserInterest:
    user_id: str
    long: HorizonState
    short: HorizonState
    event_counts: Mapping[str, int]
    tag_scores: Mapping[str, float]
    # event_id -> when it was applied (epoch s), for the last RECENT_WINDOW_S seconds.
    recent: Mapping[str, float]
    # Decayed sum (long half-life) of the behaviour vectors of one training run (version):
    # vectors of another run live in another space, so they are never mixed; a retrain
    # re-folds users from the log (plugin/pipeline/behaviour.py).
    behaviour: HorizonState | None = None
    behaviour_version: str | None = None
    # doc_id -> its latest positive interaction (epoch s), the SEEN_KEPT most recent. Kept by
    # time, not arrival, so any arrival order leaves the same set.
    seen: Mapping[str, float] = field(default_factory=dict)
    # The same behaviour vectors at the short half-life: what the user is into lately.
    behaviour_short: HorizonState | None = None
    # The content model its content sums were folded with (services.ContentModel.version;
    # "" the configured one): after a model switch the search leaves the content vectors out
    # until a re-fold puts them in the new model's space.
    content_version: str = ""

    @classmethod
    def empty(cls, user_id: str, dims: int) -> UserInterest:
        return cls(user_id, HorizonState.empty(dims), HorizonState.empty(dims), {}, {}, {})

    def fold(self, item: Contribution, half_life_long_s: float,
             half_life_short_s: float, *, count: bool = True) -> UserInterest:
        """Add one contribution; ``count`` is False for the second embedding of one event.
        (The documents it touched join ``seen`` in ``fold_events``.)"""
        long = fold(self.long, timestamp=item.timestamp, weight=item.weight,
                    embedding=item.embedding, half_life_s=half_life_long_s)
        short = fold(self.short, timestamp=item.timestamp, weight=item.weight,
                     embedding=item.embedding, half_life_s=half_life_short_s)
        counts = dict(self.event_counts)
        if count:
            counts[item.event_type] = counts.get(item.event_type, 0) + 1
        tags = dict(self.tag_scores)
        if item.tags:
            # Scores live at the long horizon's reference time, like its sums.
            if self.long.is_empty or item.timestamp >= self.long.ref_time:
                shift = (0.0 if self.long.is_empty
                         else decay_factor(item.timestamp - self.long.ref_time, half_life_long_s))
                tags = {k: v * shift for k, v in tags.items()}
                scale = 1.0
            else:
                scale = decay_factor(self.long.ref_time - item.timestamp, half_life_long_s)
            for tag in item.tags:
                tags[tag] = tags.get(tag, 0.0) + item.weight * scale
            if len(tags) > TAG_SCORES_KEPT:
                tags = dict(sorted(tags.items(), key=lambda kv: -abs(kv[1]))[:TAG_SCORES_KEPT])
        behaviour, behaviour_short = self.behaviour, self.behaviour_short
        version = self.behaviour_version
        if item.behaviour is not None and version in (None, item.behaviour_version):
            vector = np.asarray(item.behaviour, dtype=np.float64)
            behaviour = fold(behaviour or HorizonState.empty(len(vector)),
                             timestamp=item.timestamp, weight=item.weight, embedding=vector,
                             half_life_s=half_life_long_s)
            behaviour_short = fold(behaviour_short or HorizonState.empty(len(vector)),
                                   timestamp=item.timestamp, weight=item.weight,
                                   embedding=vector, half_life_s=half_life_short_s)
            version = item.behaviour_version
        return UserInterest(self.user_id, long, short, counts, tags, self.recent, behaviour,
                            version, self.seen, behaviour_short, self.content_version)

    def seen_ids(self) -> list[str]:
        """The documents held neutral in the personal terms, most recent first."""
        return sorted(self.seen, key=lambda d: (-self.seen[d], d))

    def vector_names(self) -> list[str]:
        """The unit vectors this state yields (a horizon with no positive interest has none)."""
        states = (("long", self.long), ("short", self.short), ("behaviour", self.behaviour),
                  ("behaviour_short", self.behaviour_short))
        return [name for name, state in states
                if state is not None and _direction_norm(state) is not None]

    def to_source(self, updated_at: float) -> dict[str, Any]:
        """The interests-index document: the exact state, counts and tags.

        The unit vectors are not stored: they follow from the state (``interest_vector``), and
        parsing three 384-float arrays was most of the engine's cost of writing a user. ``vectors``
        names the ones a search would use, for filtering in Kibana or eland.
        """
        source: dict[str, Any] = {
            "user_id": self.user_id,
            "weight_long": self.long.weight,
            "weight_short": self.short.weight,
            # Event ids and tags go in as values, never as object keys: the engine's JSON
            # parser interns every key it meets, and unbounded keys (an id per event) made
            # that interning a large share of the engine's CPU for each event.
            "state": {"long": self.long.to_json(), "short": self.short.to_json(),
                      "tag_scores": _key_value_lists(self.tag_scores),
                      "recent": _key_value_lists(self.recent),
                      "seen": _key_value_lists(self.seen),
                      "content_version": self.content_version},
            "event_counts": dict(self.event_counts),
            "event_count": sum(self.event_counts.values()),
            "updated_at": int(updated_at * 1000),
            "top_tags": [t for t, s in sorted(self.tag_scores.items(), key=lambda kv: -kv[1])
                         if s > 0][:TOP_TAGS],
            "vectors": self.vector_names(),
        }
        if not self.long.is_empty:
            source["last_event_at"] = round(self.long.ref_time * 1000)
        if self.behaviour is not None:
            source["state"]["behaviour"] = self.behaviour.to_json()
            source["behaviour_version"] = self.behaviour_version
            source["weight_behaviour"] = self.behaviour.weight
        if self.behaviour_short is not None:
            source["state"]["behaviour_short"] = self.behaviour_short.to_json()
        return source

    @classmethod
    def from_source(cls, source: Mapping[str, Any]) -> UserInterest:
        state = source["state"]
        return cls(
            str(source["user_id"]),
            HorizonState.from_json(state["long"]),
            HorizonState.from_json(state["short"]),
            dict(source.get("event_counts", {})),
            _read_key_values(state.get("tag_scores")),
            _read_key_values(state.get("recent")),
            HorizonState.from_json(state["behaviour"]) if state.get("behaviour") else None,
            source.get("behaviour_version"),
            _read_key_values(state.get("seen")),
            HorizonState.from_json(state["behaviour_short"]) if state.get("behaviour_short")
            else None,
            str(state.get("content_version") or ""),
        )


def contributions(event: Mapping[str, Any], docs: Mapping[str, DocVector]) -> list[Contribution]:
    """The embeddings one stored event adds: its document's, then its text's."""
    items = []
    timestamp = int(event["timestamp"]) / 1000.0  # stored in epoch milliseconds
    doc_id = event.get("doc_id")
    if doc_id is not None:
        doc = docs[doc_id]
        items.append(Contribution(timestamp, float(event["weight"]), doc.embedding,
                                  event["type"], doc.tags,
                                  None if doc.behaviour is None
                                  else behaviour_for_fold(doc.behaviour),
                                  doc.behaviour_version))
    if event.get("text_embedding") is not None:
        items.append(Contribution(timestamp, float(event["weight"]), event["text_embedding"],
                                  event["type"]))
    return items


def fold_events(user: UserInterest | None, user_id: str, events: Iterable[Mapping[str, Any]],
                docs: Mapping[str, DocVector], half_life_long_s: float,
                half_life_short_s: float, now: float,
                after_each: Callable[[Mapping[str, Any], UserInterest], None] | None = None,
                content_version: str = "") -> tuple[UserInterest | None, list[str]]:
    """Fold stored events (their documents in ``docs``), in the order given, into a user's
    state (None: a new user); returns the state and the ids newly applied. An event whose id
    the state remembers (applied in the last RECENT_WINDOW_S) is skipped: a redelivered
    batch, or a rebuild racing an update, counts it once. The workers' updates and rebuilds,
    the inspector's history, the evaluation and tuning all fold here.

    ``after_each`` sees each applied event with the state right after it (its vectors; the
    remembered ids and the seen documents are set once, at the end): a history in one pass.
    A new user's state records ``content_version``, the model its vectors come from.
    """
    recent = dict(user.recent) if user is not None else {}
    seen = dict(user.seen) if user is not None else {}
    applied = []
    for event in events:
        event_id = str(event["event_id"])
        items = contributions(event, docs)
        if event_id in recent or not items:
            continue
        if user is None:
            # The vectors' own size: folding needs no model in this process.
            user = replace(UserInterest.empty(user_id, len(items[0].embedding)),  # type: ignore[arg-type]
                           content_version=content_version)
        for n, item in enumerate(items):
            user = user.fold(item, half_life_long_s, half_life_short_s, count=n == 0)
        recent[event_id] = now
        applied.append(event_id)
        doc_id = event.get("doc_id")
        if doc_id is not None and float(event["weight"]) > 0:
            seen[str(doc_id)] = max(seen.get(str(doc_id), -math.inf), items[0].timestamp)
        if after_each is not None:
            after_each(event, user)
    if user is None or not applied:
        return user, applied
    return replace(user, recent={k: v for k, v in recent.items()
                                 if v >= now - RECENT_WINDOW_S},
                   seen=_most_recent(seen, SEEN_KEPT)), applied


def _most_recent(seen: Mapping[str, float], kept: int) -> dict[str, float]:
    if len(seen) <= kept:
        return dict(seen)
    return dict(sorted(seen.items(), key=lambda kv: (-kv[1], kv[0]))[:kept])


def _key_value_lists(scores: Mapping[str, float]) -> dict[str, list[Any]]:
    """Keys and values as two lists (built at C speed; a list per pair cost a worker a
    noticeable share of its time per event: docs/benchmarks.md)."""
    return {"keys": list(scores), "values": list(scores.values())}


def _read_key_values(stored: Mapping[str, Any] | Sequence[Sequence[Any]] | None
                     ) -> dict[str, float]:
    """``{"keys": [...], "values": [...]}``; earlier documents kept ``[[key, value], ...]``
    or a plain object, still read."""
    if not stored:
        return {}
    if isinstance(stored, Mapping):
        if set(stored) == {"keys", "values"} and isinstance(stored["keys"], list):
            return dict(zip(map(str, stored["keys"]), map(float, stored["values"]), strict=True))
        return {str(k): float(v) for k, v in stored.items()}
    return {str(key): float(value) for key, value in stored}
