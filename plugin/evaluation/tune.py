"""`es-interest tune`: fit the blend weights and half-lives on a deployment's own event log.

Each user's last ``holdout_share`` of events (in time) is held out. Each positive interaction
in it becomes a
query (one of the document's tags that does not name it, as `make eval` does) whose answer
is that document; users' profiles are folded, with the workers' own functions, from their
events before their cut only. Half of the users fit (half-lives, then the weights term by
term, as the evaluation does; ``linear_retriever`` and ``knn_linear`` scored offline,
offline_blend.py); the
other half measures the fitted personalized ranking
against the same request without a user, with a bootstrap interval and paired tests. The
result is a ranking file (plugin/ranking.json's shape) that the API and workers read through
ES_INTEREST_RANKING_FILE.

Known bias: documents' popularity and behaviour vectors in the index were computed from the
whole log, held-out events included, which flatters those two terms; the content profiles
are exact as of the cut.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from plugin.config import WEIGHT_NAMES
from plugin.evaluation import data, metrics
from plugin.evaluation.offline_blend import OfflineBlend, TermStore
from plugin.evaluation.run import (
    DAY,
    DEFAULT,
    HALF_LIVES,
    SIZE,
    Evaluator,
    Method,
    _tune,
    by_user,
)
from plugin.events import APPLIED
from plugin.interest import fold_events
from plugin.pipeline.doc_vectors import fetch_doc_vectors
from plugin.search import UserVectors, default_strategy, vectors_of
from plugin.services import Services


def _log(services: Services) -> list[dict[str, Any]]:
    settings = services.settings
    services.engine.refresh(settings.events_alias)
    query = {"query": {"term": {"status": APPLIED}}}
    events = [h["_source"] for h in services.engine.scan(settings.events_alias, query)]
    return sorted(events, key=lambda e: (int(e["timestamp"]), e["event_id"]))


def _queries(services: Services, held_out: list[dict[str, Any]], limit: int,
             rng: random.Random) -> list[data.Query]:
    wanted = [e for e in held_out if e.get("doc_id") and float(e["weight"]) > 0]
    ids = sorted({e["doc_id"] for e in wanted})
    docs = services.engine.mget_sources(services.settings.docs_alias, ids, ["title", "tags"])
    rng.shuffle(wanted)
    out: list[data.Query] = []
    per_user: defaultdict[str, int] = defaultdict(int)
    for e in sorted(wanted, key=lambda e: per_user[e["user_id"]]):
        doc = docs.get(e["doc_id"])
        if doc is None or per_user[e["user_id"]] >= 3:
            continue
        title = set(re.findall(r"\w+", str(doc.get("title", "")).lower()))
        options = sorted({t.lower() for t in doc.get("tags") or []
                          if not set(re.findall(r"\w+", t.lower())) & title})
        if options:
            out.append(data.Query(e["user_id"], e["doc_id"], rng.choice(options),
                                  int(e["timestamp"]) // 1000))
            per_user[e["user_id"]] += 1
        if len(out) >= limit:
            break
    return out


def _profiles(services: Services, train: list[dict[str, Any]], users: set[str],
              half_lives: tuple[float, float]) -> dict[str, UserVectors]:
    docs = fetch_doc_vectors(services, {e["doc_id"] for e in train
                                        if e.get("doc_id") and e["user_id"] in users})
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in train:
        if e["user_id"] in users and (not e.get("doc_id") or e["doc_id"] in docs):
            by_user[e["user_id"]].append(e)
    out = {}
    for user_id, events in by_user.items():
        state, _ = fold_events(None, user_id, events, docs, half_lives[0] * DAY,
                               half_lives[1] * DAY, 0.0)
        if state is not None:
            out[user_id] = vectors_of(state)
    return out


def _split(log: list[dict[str, Any]], share: float
           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per user, in time: the last ``share`` of their events (of users with 5 or more) are
    held out; everything before each user's cut trains."""
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in log:
        by_user[e["user_id"]].append(e)
    train, held_out = [], []
    for events in by_user.values():
        cut = len(events) - (max(1, int(len(events) * share)) if len(events) >= 5 else 0)
        train += events[:cut]
        held_out += events[cut:]
    return sorted(train, key=lambda e: int(e["timestamp"])), held_out


def _half(user_id: str) -> int:
    return hashlib.sha256(user_id.encode()).digest()[0] % 2


def tune(services: Services, holdout_share: float = 0.1, max_queries: int = 600,
         progress: Callable[[str], None] = print) -> dict[str, Any]:
    log = _log(services)
    if len(log) < 100:
        raise ValueError(f"the event log holds {len(log)} applied events; tuning needs "
                         "at least 100 (and a few hundred users' later interactions)")
    train, held_out = _split(log, holdout_share)
    rng = random.Random(17)
    queries = _queries(services, held_out, max_queries, rng)
    fit = [q for q in queries if _half(q.user_id) == 0]
    check = [q for q in queries if _half(q.user_id) == 1]
    if len(fit) < 20 or len(check) < 20:
        raise ValueError(f"only {len(queries)} held-out queries (users' latest positive "
                         "interactions with tagged documents); tuning needs 40 or more")
    users = {q.user_id for q in queries}
    strategy = default_strategy(services)
    progress(f"{len(log)} events: {len(fit)} fitting and {len(check)} "
             f"checking queries from {len(users)} users; strategy {strategy}")
    settings = services.settings
    current = (settings.half_life_long_s / DAY, settings.half_life_short_s / DAY)
    scored = []
    terms = TermStore()  # the searches another half-life's profiles ask again
    for half_lives in dict.fromkeys([current, *HALF_LIVES]):
        evaluator = Evaluator(services, {"dynamic": by_user(_profiles(services, train, users,
                                                                      half_lives))},
                              offline=OfflineBlend(settings.personal_candidates, SIZE,
                                                   shared=terms, own=terms))
        score = evaluator.ndcg(Method("half-lives", None, "dynamic", strategy), fit)
        scored.append((score, half_lives))
        progress(f"half-lives {half_lives}: NDCG@10 {score:.4f}")
    half_lives = max(scored)[1]
    evaluator = Evaluator(services, {"dynamic": by_user(_profiles(services, train, users,
                                                                  half_lives))},
                          offline=OfflineBlend(settings.personal_candidates, SIZE,
                                               shared=terms, own=terms))
    without, with_behaviour = _tune(evaluator, fit, strategy, progress)
    evaluator = evaluator.using(Services(replace(
        settings, blend_weights={**settings.blend_weights, strategy: asdict(with_behaviour)},
        blend_weights_without_behaviour={**settings.blend_weights_without_behaviour,
                                         strategy: asdict(without)})))
    ours = metrics.per_query(evaluator.ranks(Method(DEFAULT, None, "dynamic", strategy), check))
    plain = metrics.per_query(evaluator.ranks(Method("plain", None, None, strategy), check))
    test = metrics.paired_test(ours["ndcg@10"], plain["ndcg@10"])
    report = {
        "strategy": strategy, "queries": {"fit": len(fit), "check": len(check)},
        "half_lives_days": half_lives,
        "ndcg@10": {name: {"mean": float(v["ndcg@10"].mean()),
                           "ci95": metrics.bootstrap_ci(v["ndcg@10"])}
                    for name, v in (("personalized", ours), ("not personalized", plain))},
        "personalized_minus_plain": test,
    }
    ranking = {
        "chosen_by": f"`es-interest tune` on this deployment's log ({len(fit)} queries)",
        "half_life_long_days": half_lives[0], "half_life_short_days": half_lives[1],
        "popularity_half_life_days": settings.popularity_half_life_s / DAY,
        "seen_policy": settings.seen_policy,
        "weights": {s: {t: float(w.get(t, 0.0)) for t in WEIGHT_NAMES}
                    for s, w in evaluator.services.settings.blend_weights.items()},
        "weights_without_behaviour": {
            s: {t: float(w.get(t, 0.0)) for t in WEIGHT_NAMES}
            for s, w in evaluator.services.settings.blend_weights_without_behaviour.items()},
    }
    return {"report": report, "ranking": ranking}


def write(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result["ranking"], indent=2) + "\n")
