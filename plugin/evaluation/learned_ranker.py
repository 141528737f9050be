"""A learned ranker over the blend's terms, measured against the linear blend (not shipped).

LightGBM's ``lambdarank`` re-orders the linear blend's first ``WINDOW`` documents from what
the blend's request already knows of each: every term's score (those the request holds; a
term of weight 0 reads 0), the blend's score and place, the query's length, whether the
user has a behaviour vector and how many documents they have seen. The documents held
neutral (the user's seen ones) keep their places: the seen policy decides those. A ranker
that placed them would learn how often the evaluation's query mix asks for a seen document
(never in the discovery protocols, by construction in re-finding): the protocol's design,
not the user's. It is fitted on the discovery protocols' validation queries.

Whether the learned form makes personalization earn more is the question, so it is fitted
and measured twice: with the user, and without one (the same features, the user's at 0,
on the non-personalized default's own list), since a ranker the product shipped would rank
searches without a user too and so raise the comparator. Both offline, from the terms the
offline blend fetched (``offline_blend.py``; the linear arms are that blend's own
ranks): cross-validated on validation (folds by user) and, fitted on every validation
query, on the test queries.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from plugin.evaluation import data, metrics
from plugin.evaluation.offline_blend import TERMS, OfflineBlend, QueryTerms, blend
from plugin.search import BlendWeights, UserVectors, blend_plan
from plugin.services import Services

# How many of the linear blend's first documents the ranker re-orders.
WINDOW = 100
FEATURES = (*TERMS, "blend", "place", "words", "has_behaviour", "seen_count")
SEEN_COLUMN = len(FEATURES)  # the held-neutral mark, after the features (not one of them)
FOLDS = 5
# Small trees, slow learning, row and feature sampling: the validation queries are few.
PARAMS: dict[str, Any] = {
    "objective": "lambdarank", "learning_rate": 0.03, "num_leaves": 15,
    "min_data_in_leaf": 40, "bagging_fraction": 0.8, "bagging_freq": 1,
    "feature_fraction": 0.8, "lambdarank_truncation_level": 20, "verbose": -1,
    "seed": 0, "num_threads": 2}
ROUNDS = 300
ARMS = ("linear", "learned")


class NothingToLearn(ValueError):
    """No window to fit a ranker on."""


@dataclass(frozen=True)
class Window:
    """One query's first ``WINDOW`` documents of the linear blend, best first, as rows of
    ``FEATURES`` plus the held-neutral mark, and where its target is (None: not among them)."""

    rows: npt.NDArray[np.float64]  # (documents, len(FEATURES) + 1)
    target: int | None
    protocol: str
    user: str

    @property
    def seen(self) -> npt.NDArray[np.bool_]:
        return self.rows[:, SEEN_COLUMN] > 0

    @property
    def features(self) -> npt.NDArray[np.float64]:
        return self.rows[:, :SEEN_COLUMN]


def window(terms: QueryTerms, plan: BlendWeights, query: data.Query, words: int,
           size: int = WINDOW) -> Window:
    """``query``'s window under ``plan`` (the weights ``search`` would send)."""
    candidates, score = blend(terms, plan)
    index = np.flatnonzero(candidates)
    order = index[np.argsort(-score[index], kind="stable")][:size]
    sent = np.array([getattr(plan, t) > 0 for t in TERMS])
    user = terms.user
    rows = np.column_stack([
        terms.scores[order].astype(np.float64) * sent,
        score[order],
        np.arange(len(order), dtype=np.float64),
        np.full(len(order), float(words)),
        np.full(len(order), float(user.behaviour is not None)),
        np.full(len(order), float(len(user.seen))),
        terms.seen[order].astype(np.float64),
    ]) if len(order) else np.zeros((0, SEEN_COLUMN + 1))
    found = [n for n, i in enumerate(order) if terms.ids[i] == query.movie_id]
    return Window(rows, found[0] if found else None, query.protocol, query.user_id)


def fit(windows: Sequence[Window]) -> Any:
    """A ranker of the new (not held-neutral) documents, on the discovery protocols'
    windows that hold their target."""
    import lightgbm

    features, labels, groups = [], [], []
    for w in windows:
        new = ~w.seen
        if w.protocol not in data.DISCOVERY or w.target is None or not new[w.target]:
            continue
        label = np.zeros(len(w.rows))
        label[w.target] = 1.0
        features.append(w.features[new])
        labels.append(label[new])
        groups.append(int(new.sum()))
    if not groups:
        raise NothingToLearn("no discovery query with its target in the window to learn from")
    train = lightgbm.Dataset(np.vstack(features), np.concatenate(labels), group=groups,
                             feature_name=list(FEATURES))
    return lightgbm.train(PARAMS, train, num_boost_round=ROUNDS)


def reranked(model: Any, w: Window) -> int | None:
    """The target's 1-based place once the new documents are re-ordered by ``model`` in the
    places they held (the held-neutral ones stay where they were)."""
    if w.target is None:
        return None
    new = np.flatnonzero(~w.seen)
    if w.seen[w.target] or len(new) < 2:
        return w.target + 1
    order = new[np.argsort(-model.predict(w.features[new]), kind="stable")]
    return int(new[int(np.flatnonzero(order == w.target)[0])]) + 1


def linear(w: Window) -> int | None:
    return None if w.target is None else w.target + 1


def fold_of(user: str, folds: int = FOLDS) -> int:
    """A user's cross-validation fold: all of a user's queries in one."""
    return zlib.crc32(user.encode()) % folds


def cross_validated(windows: Sequence[Window], folds: int = FOLDS) -> list[int | None]:
    """Each window's place under a ranker fitted on the other folds' users."""
    fold = np.array([fold_of(w.user, folds) for w in windows])
    out: list[int | None] = [None] * len(windows)
    for f in range(folds):
        held = np.flatnonzero(fold == f)
        if not len(held):
            continue
        model = fit([w for w, g in zip(windows, fold, strict=True) if g != f])
        for i in held:
            out[i] = reranked(model, windows[i])
    return out


def windows(offline: OfflineBlend, services: Services, strategy: str,
            queries: Sequence[data.Query], profile: str | None,
            vectors: Callable[[data.Query], UserVectors] | None) -> list[Window]:
    """Each query's window under the configured weights, with ``profile``'s user or none."""
    offline.prefetch(services, strategy, queries, profile, vectors)
    out = []
    for q in queries:
        user = vectors(q) if vectors is not None else UserVectors()
        terms = offline.terms(services, strategy, q, profile, user)
        plan, _, _ = blend_plan(services, strategy, user, terms.inputs)
        out.append(window(terms, plan, q, terms.inputs.words))
    return out


def _means(ranks: Sequence[int | None], queries: Sequence[data.Query]) -> dict[str, float]:
    ndcg = metrics.per_query(ranks)["ndcg@10"]
    return {p: round(v, 4) for p, v in metrics.protocol_means(ndcg, queries).items()}


def measure(offline: OfflineBlend, services: Services, strategy: str,
            validation: Sequence[data.Query], test: Sequence[data.Query], profile: str,
            vectors: Callable[[data.Query], UserVectors],
            progress: Callable[[str], None] = print) -> dict[str, Any]:
    """``_measure``, or why it was skipped (a run too small to learn from: a fold's users
    with no discovery query whose target is in its window)."""
    try:
        return _measure(offline, services, strategy, validation, test, profile, vectors,
                        progress)
    except NothingToLearn as exc:
        progress(f"learned ranker ({strategy}): skipped, {exc}")
        return {"strategy": strategy, "skipped": str(exc)}


def _measure(offline: OfflineBlend, services: Services, strategy: str,
            validation: Sequence[data.Query], test: Sequence[data.Query], profile: str,
            vectors: Callable[[data.Query], UserVectors],
            progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Linear and learned, with and without the user: mean NDCG@10 per protocol on
    validation (cross-validated) and test, each test arm's per-query ranks, and on test
    the learned form against the linear one (paired tests), and personalization's gain
    over the better of the two rankings without a user in each form."""
    users = {"personalized": (profile, vectors), "non-personalized": (None, None)}
    out: dict[str, Any] = {"strategy": strategy, "window": WINDOW, "rounds": ROUNDS,
                           "folds": FOLDS, "validation": {}, "test": {}, "ranks": {}}
    test_ndcg: dict[tuple[str, str], npt.NDArray[np.float64]] = {}
    for who, (name, user) in users.items():
        val = windows(offline, services, strategy, validation, name, user)
        held_out = windows(offline, services, strategy, test, name, user)
        model = fit(val)
        for arm, val_ranks, test_ranks in (
                ("linear", [linear(w) for w in val], [linear(w) for w in held_out]),
                ("learned", cross_validated(val), [reranked(model, w) for w in held_out])):
            key = f"{arm}, {who}"
            out["validation"][key] = _means(val_ranks, validation)
            out["test"][key] = _means(test_ranks, test)
            out["ranks"][key] = test_ranks
            test_ndcg[(arm, who)] = metrics.per_query(test_ranks)["ndcg@10"]
        progress(f"learned ranker ({strategy}, {who}): validation " + "; ".join(
            f"{arm} {out['validation'][f'{arm}, {who}']}" for arm in ARMS))
    protocols = np.array([q.protocol for q in test])
    out["learned_vs_linear"] = {
        who: {p: metrics.paired_test(test_ndcg[("learned", who)][protocols == p],
                                     test_ndcg[("linear", who)][protocols == p])
              for p in data.PROTOCOLS if (protocols == p).any()}
        for who in users}
    # Personalization's gain in each form: over the same form without a user, and over the
    # better of the two forms without one (the comparator, were the learned form shipped).
    out["personalization_gain"] = {}
    for arm in ARMS:
        gains: dict[str, dict[str, float | None]] = {}
        for p in data.DISCOVERY:
            mask = protocols == p
            if not mask.any():
                continue
            ours = float(test_ndcg[(arm, "personalized")][mask].mean())
            same = float(test_ndcg[(arm, "non-personalized")][mask].mean())
            best = max(float(test_ndcg[(a, "non-personalized")][mask].mean()) for a in ARMS)
            gains[p] = {"same_form": _gain(ours, same), "best": _gain(ours, best)}
        out["personalization_gain"][arm] = gains
    return out


def _gain(ours: float, theirs: float) -> float | None:
    return round(ours / theirs - 1.0, 4) if theirs > 0 else None
