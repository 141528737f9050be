"""Document popularity: a decayed sum of the interaction weights each document received.

For one document with half-life h, at reference time T (its latest event)::

    P(T) = sum_i w_i * 2^(-(T - t_i)/h)      (signed: a dislike subtracts)

the same exact, order-independent decayed sum as a user's interest (plugin/interest.py), with a
scalar in place of a vector; h = 0 means no decay (a weighted count). Workers fold the events
they newly applied into per-document states held in Redis (one atomic script per batch), and
a coalesced flush writes changed documents' values, decayed to the newest event time seen,
to their ``popularity`` field. ``rebuild`` replays the whole event log exactly, should Redis
lose its state.

A write is a partial update, which re-indexes the whole document with its vectors (about a
millisecond of engine CPU each, against a fraction of that for a whole event), so writes are
rationed three ways: a worker schedules one flush every ``popularity_flush_s`` (10 s); a
document is written only when its ranking term ``log10(1 + popularity)`` moved by more than
``popularity_tolerance`` (0.01) since its last write, so what the engine holds is never further
than that from the exact value; and one flush writes at most ``popularity_flush_max_docs``
(1,000) documents, the largest changes first, leaving the rest for the next. Under a load the
engine cannot follow, popularity lags, largest changes first, and events keep their speed.

Values are decayed to the *newest event seen*, not the wall clock: replaying an old log then
ranks as it would have at that time. Two documents flushed at different times differ by the
decay in between, so every document is flushed again once the clock has moved by 1/64 of a
half-life (a 1% error at most).

Why a ``float`` field and ``function_score`` rather than ``rank_feature``: rank_feature needs the
mapper-extras module, which neither the Maven-built engines nor every managed cluster has;
``field_value_factor`` is in every engine's core, and equally script-free.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from plugin.documents import POPULARITY_FIELD as FIELD
from plugin.engine import JSON
from plugin.events import applied_events_query
from plugin.services import Services

# Below this the field is removed: nothing (or net dislike) says this document is wanted.
MIN_VALUE = 1e-6
FLUSH_BATCH = 1000
# Re-flush every document once the clock moved by this share of the half-life.
FULL_PASS_SHARE = 1 / 64

# KEYS: states hash, dirty set, clock. ARGV: half-life (s, 0 = none), then doc, t (s), w triples.
# The fold of plugin.interest.fold on a scalar; %.17g keeps doubles exact through strings.
_FOLD = """
local h = tonumber(ARGV[1])
local clock = tonumber(redis.call('GET', KEYS[3]) or '-1e308')
local function decay(dt) if h <= 0 then return 1.0 end return 2 ^ (-dt / h) end
for i = 2, #ARGV, 3 do
  local doc, t, w = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local cur = redis.call('HGET', KEYS[1], doc)
  local v, ref = w, t
  if cur then
    local sp = string.find(cur, ' ')
    local old, oref = tonumber(string.sub(cur, 1, sp - 1)), tonumber(string.sub(cur, sp + 1))
    if t >= oref then v = old * decay(t - oref) + w
    else v, ref = old + w * decay(oref - t), oref end
  end
  redis.call('HSET', KEYS[1], doc, string.format('%.17g %.17g', v, ref))
  redis.call('SADD', KEYS[2], doc)
  if t > clock then clock = t end
end
redis.call('SET', KEYS[3], string.format('%.17g', clock))
return #ARGV
"""


@dataclass(frozen=True)
class Keys:
    states: str
    dirty: str
    clock: str
    full_pass: str
    flush_scheduled: str
    # doc -> the value last written to the engine (what the tolerance is measured from).
    written: str

    @classmethod
    def of(cls, services: Services) -> Keys:
        names = ("states", "dirty", "clock", "full-pass", "flush-scheduled", "written")
        return cls(*(services.settings.redis_key("popularity", n) for n in names))


def decay(elapsed_s: float, half_life_s: float) -> float:
    return 1.0 if half_life_s <= 0 else float(2.0 ** (-elapsed_s / half_life_s))


def fold_one(state: tuple[float, float] | None, timestamp: float, weight: float,
             half_life_s: float) -> tuple[float, float]:
    """(value, reference time) after one event: what the Redis script does, in Python."""
    if state is None:
        return weight, timestamp
    value, ref = state
    if timestamp >= ref:
        return value * decay(timestamp - ref, half_life_s) + weight, timestamp
    return value + weight * decay(ref - timestamp, half_life_s), ref


def replay(events: Iterable[tuple[str, float, float]], half_life_s: float
           ) -> dict[str, tuple[float, float]]:
    """(doc_id, timestamp s, weight) events folded in time order: the exact rebuild."""
    states: dict[str, tuple[float, float]] = {}
    for doc_id, timestamp, weight in sorted(events, key=lambda e: e[1]):
        states[doc_id] = fold_one(states.get(doc_id), timestamp, weight, half_life_s)
    return states


def value_at(state: tuple[float, float], when: float, half_life_s: float) -> float:
    value, ref = state
    return value * decay(max(0.0, when - ref), half_life_s)


def _triples(events: Iterable[Mapping[str, Any]]) -> list[str]:
    args: list[str] = []
    for event in events:
        if event.get("doc_id") is not None:
            args += [str(event["doc_id"]), repr(int(event["timestamp"]) / 1000.0),
                     repr(float(event["weight"]))]
    return args


def fold_events(services: Services, events: Iterable[Mapping[str, Any]]) -> None:
    """Fold stored events (timestamps in ms) that were *newly applied* into their documents'
    states (the user fold says which: a redelivered event is not newly applied)."""
    args = _triples(events)
    if not args:
        return
    keys = Keys.of(services)
    redis = services.redis
    script = redis.register_script(_FOLD)
    half_life = repr(services.settings.popularity_half_life_s)
    for start in range(0, len(args), 3 * 1000):
        script(keys=[keys.states, keys.dirty, keys.clock],
               args=[half_life, *args[start:start + 3000]])


def mark_dirty(services: Services, doc_ids: Iterable[str]) -> None:
    """Documents re-indexed (a new source may lack the field): write their popularity again."""
    keys = Keys.of(services)
    ids = list(doc_ids)
    if ids:
        known = [d for d, state in zip(ids, services.redis.hmget(keys.states, ids), strict=True)
                 if state is not None]
        if known:
            with services.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(keys.written, *known)  # the engine holds nothing for them now
                pipe.sadd(keys.dirty, *known)
                pipe.execute()


def flush_due(services: Services) -> bool:
    """True when documents wait for a flush and none is scheduled: the caller schedules one
    ``popularity_flush_s`` from now. A flush scheduled earlier starts after this mark expires, so it
    sees every change made while the mark was set."""
    keys = Keys.of(services)
    redis = services.redis
    return bool(redis.scard(keys.dirty)) and bool(
        redis.set(keys.flush_scheduled, 1, nx=True,
                  px=int(services.settings.popularity_flush_s * 1000)))


def clock(services: Services) -> float | None:
    raw = services.redis.get(Keys.of(services).clock)
    return None if raw is None else float(raw)


def values(services: Services, doc_ids: list[str], now: float | None = None
           ) -> dict[str, float]:
    """Documents' popularity decayed to ``now`` (default: the clock); documents without
    events are absent."""
    keys = Keys.of(services)
    now = clock(services) if now is None else now
    out = {}
    for doc_id, raw in zip(doc_ids, services.redis.hmget(keys.states, doc_ids), strict=True):
        if raw is not None and now is not None:
            value, ref = (float(x) for x in raw.split())
            out[doc_id] = value_at((value, ref), now, services.settings.popularity_half_life_s)
    return out


def term(value: float) -> float:
    """What ranking adds for a popularity value, before its weight (plugin/strategies.py)."""
    return math.log10(1.0 + value) if value >= MIN_VALUE else 0.0


def flush(services: Services, refresh: bool = False, max_docs: int | None = None,
          tolerance: float | None = None) -> int:
    """Write changed documents' popularity; returns how many were written.

    ``max_docs`` (0: all) and ``tolerance`` default to the settings; the rest of the changes
    stay marked for the next flush, largest first.
    """
    settings = services.settings
    keys = Keys.of(services)
    redis = services.redis
    half_life = settings.popularity_half_life_s
    limit = settings.popularity_flush_max_docs if max_docs is None else max_docs
    tolerance = settings.popularity_tolerance if tolerance is None else tolerance
    now = clock(services)
    if now is None:
        return 0
    last = redis.get(keys.full_pass)
    if half_life > 0 and (last is None or now - float(last) > half_life * FULL_PASS_SHARE):
        # Every document ages alike; look at them all (those moved past the tolerance are written).
        for batch in _hash_keys(services, keys.states):
            redis.sadd(keys.dirty, *batch)
        redis.set(keys.full_pass, repr(now))
    # (change of the ranking term, doc, value) for documents past the tolerance.
    changed: list[tuple[float, str, float]] = []
    while True:
        ids = [i.decode() if isinstance(i, bytes) else str(i)
               for i in redis.spop(keys.dirty, FLUSH_BATCH) or []]
        if not ids:
            break
        current = values(services, ids, now)
        before = redis.hmget(keys.written, ids)
        for doc_id, raw in zip(ids, before, strict=True):
            value = current.get(doc_id, 0.0)
            change = abs(term(value) - (term(float(raw)) if raw is not None else 0.0))
            # An exact flush (tolerance 0) also writes documents whose engine value is unknown.
            if change > tolerance or (raw is None and tolerance == 0):
                changed.append((change, doc_id, value))
    changed.sort(key=lambda c: -c[0])
    now_due = changed if limit <= 0 else changed[:limit]
    later = [] if limit <= 0 else changed[limit:]
    if later:
        redis.sadd(keys.dirty, *(doc_id for _, doc_id, _ in later))
    written = 0
    for start in range(0, len(now_due), FLUSH_BATCH):
        chunk = {doc_id: value for _, doc_id, value in now_due[start:start + FLUSH_BATCH]}
        try:
            done = _write(services, chunk, refresh)
        except Exception:
            redis.sadd(keys.dirty, *(d for _, d, _ in now_due[start:]))  # the next flush
            raise
        if done:
            redis.hset(keys.written, mapping={d: repr(chunk[d]) for d in done})
        written += len(done)
    return written


def _hash_keys(services: Services, name: str) -> Iterable[list[str]]:
    batch: list[str] = []
    for key, _ in services.redis.hscan_iter(name, count=FLUSH_BATCH):
        batch.append(key.decode() if isinstance(key, bytes) else str(key))
        if len(batch) >= FLUSH_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _write(services: Services, current: Mapping[str, float], refresh: bool) -> list[str]:
    """Partial updates of the documents' field; returns the ids written."""
    actions: list[JSON] = [
        {"_op_type": "update", "_index": services.settings.docs_alias, "_id": doc_id,
         "retry_on_conflict": 3,
         "doc": {FIELD: round(value, 6) if value >= MIN_VALUE else None}}
        for doc_id, value in current.items()]
    outcome = services.engine.bulk(actions, refresh=refresh, chunk_size=FLUSH_BATCH)
    # A document not indexed (yet) is marked again when it is.
    outcome.raise_if_refused("popularity writes refused", handled=[404])
    return [item.id for item in outcome.written]


def rebuild(services: Services, before_ms: int | None = None) -> int:
    """Recompute every document's state from the applied events in the log (before
    ``before_ms``, where given: a backtest), exactly, and write every document that has one
    or holds a value no event supports any more. Returns the number of documents with
    events."""
    settings = services.settings
    services.engine.refresh(settings.events_alias)
    query = {"query": applied_events_query(before_ms),
             "_source": ["doc_id", "timestamp", "weight"]}
    events = [(h["_source"]["doc_id"], int(h["_source"]["timestamp"]) / 1000.0,
               float(h["_source"]["weight"]))
              for h in services.engine.scan(settings.events_alias, query)]
    states = replay(events, settings.popularity_half_life_s)
    keys = Keys.of(services)
    with services.redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.states, keys.clock, keys.full_pass, keys.written)
        items = list(states.items())
        for start in range(0, len(items), FLUSH_BATCH):
            pipe.hset(keys.states, mapping={d: f"{v!r} {ref!r}" for d, (v, ref)
                                            in items[start:start + FLUSH_BATCH]})
            pipe.sadd(keys.dirty, *(d for d, _ in items[start:start + FLUSH_BATCH]))
        held = [h["_id"] for h in services.engine.scan(
            settings.docs_alias, {"query": {"exists": {"field": FIELD}}, "_source": False})
            if h["_id"] not in states]
        for start in range(0, len(held), FLUSH_BATCH):
            pipe.sadd(keys.dirty, *held[start:start + FLUSH_BATCH])  # flushed to nothing
        pipe.set(keys.clock, repr(max((t for _, t, _ in events), default=0.0)))
        pipe.execute()
    flush(services, refresh=True, max_docs=0, tolerance=0.0)  # every document, exactly
    return len(states)
