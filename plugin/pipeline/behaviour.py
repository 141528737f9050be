"""Behaviour (collaborative) document vectors learned from the event log, and users re-folded.

Two documents are alike, in behaviour, when the same users liked both. Three models learn that
from users' positive interactions (``behaviour_model``; `make eval` chooses on validation, with
each model's own settings): ``ppmi_svd`` counts how often two documents share a user, turns
the counts into positive pointwise mutual information (with the usual 0.75 smoothing of the
context counts) and factors that document x document matrix with a truncated SVD (scipy),
each document getting ``U * sqrt(S)``; ``item2vec`` is gensim's skip-gram with negative
sampling over each user's time-ordered likes; ``als`` is ``implicit``'s alternating least
squares on the user x document matrix. Each learns ``behaviour_dims - 1`` dimensions, scaled
to unit length; the space's last dimension is kept for vectors mapped from text, below.

Each run is a *version*: documents get ``behaviour`` and ``behaviour_version``; documents with
fewer than ``behaviour_min_interactions`` users are left without (search serves them by their
content vector), or with ``behaviour_text_map`` get one mapped from their content vector,
less trusted than a learned one: its mapped direction times ``behaviour_text_map_confidence``,
the rest of its unit length in the last dimension, which no user's vector has
(``plugin.interest.behaviour_for_fold``). Its cosine to any user is then the confidence times
its direction's: mapped vectors sit nearer the space's centre than learned ones, and at
full trust their crowd pushes the learned ones out of users' nearest documents.

Vectors of two runs live in different spaces, so users are then re-folded from the event log
(the exact rebuild), and until a user's version matches the documents', search leaves that
user's behaviour term out. Each run also records how much of what users take next its
vectors cover (``target_coverage``): search weighs the behaviour terms by it.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from plugin.caches import behaviour_coverage_key, behaviour_version_key
from plugin.config import Settings
from plugin.events import applied_events_query, positive_sequences_of
from plugin.pipeline.users import rebuild_all
from plugin.services import Services

FIELDS = ("behaviour", "behaviour_version")
CONTEXT_SMOOTHING = 0.75


def _key(services: Services, name: str) -> str:
    return services.settings.redis_key("behaviour", name)


def count_events(services: Services, applied: int) -> None:
    """Count events newly applied (the log's size, for automatic retraining)."""
    if applied:
        services.redis.incrby(_key(services, "events"), applied)


def training_due(services: Services) -> bool:
    """True once when a run should be scheduled (no operator or beat needed): no version yet
    and ``behaviour_first_training_events`` applied, or the log doubled since the last run
    and ``behaviour_training_min_interval_s`` passed.
    The caller schedules it ``behaviour_training_delay_s`` later (a bulk import goes on)."""
    settings = services.settings
    events, at_last, when = services.redis.mget(_key(services, "events"),
                                                _key(services, "events-at-training"),
                                                _key(services, "trained-at"))
    total, last = int(events or 0), int(at_last or 0)
    if total < max(settings.behaviour_first_training_events, 2 * last):
        return False
    if when is not None and time.time() - float(when) < settings.behaviour_training_min_interval_s:
        return False
    # One schedule per due point: the mark lives until the run has started.
    return bool(services.redis.set(_key(services, "scheduled"), 1, nx=True,
                                   ex=int(services.settings.behaviour_training_delay_s * 10) + 60))


def item_vectors(pairs: list[tuple[str, str]], dims: int, min_users: int
                 ) -> dict[str, np.ndarray]:
    """(user, document) positive pairs -> unit behaviour vectors of the documents that at
    least ``min_users`` users liked. Pure: no engine."""
    # scipy loads where a training runs, as the other models' libraries do: the events
    # workers import this module for the training schedule only, and scipy is a large share
    # of an owner's memory.
    from scipy import sparse
    from scipy.sparse.linalg import svds

    users: dict[str, int] = {}
    counts: dict[str, set[str]] = {}
    for user, doc in pairs:
        counts.setdefault(doc, set()).add(user)
    items = sorted(d for d, who in counts.items() if len(who) >= min_users)
    if len(items) <= 2:
        return {}
    column = {d: i for i, d in enumerate(items)}
    rows, cols = [], []
    for doc in items:
        for user in counts[doc]:
            rows.append(users.setdefault(user, len(users)))
            cols.append(column[doc])
    x = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(users), len(items)))
    co = (x.T @ x).tocoo()
    keep = co.row != co.col
    row, col, count = co.row[keep], co.col[keep], co.data[keep]
    if count.size == 0:
        return {}
    marginal = np.bincount(row, weights=count, minlength=len(items))
    context = marginal ** CONTEXT_SMOOTHING
    pmi = np.log(count * context.sum() / (marginal[row] * context[col]))
    positive = pmi > 0
    matrix = sparse.csr_matrix((pmi[positive], (row[positive], col[positive])),
                               shape=(len(items), len(items)))
    k = min(dims, len(items) - 2)
    # A fixed start vector: the same events give the same vectors.
    u, s, _ = svds(matrix, k=k, v0=np.full(len(items), len(items) ** -0.5))
    vectors = u * np.sqrt(s)
    out = np.zeros((len(items), dims))
    out[:, :k] = vectors
    norms = np.linalg.norm(out, axis=1)
    return {d: out[i] / norms[i] for i, d in enumerate(items) if norms[i] > 0}


RIDGE_ALPHAS = (0.01, 0.1, 1.0, 10.0)


def fit_text_map(content: np.ndarray, behaviour: np.ndarray) -> np.ndarray:
    """The ridge map from documents' content vectors to their behaviour vectors (fitted on
    documents that have both; its penalty the best of RIDGE_ALPHAS on a held-out fifth).
    Pure: no engine."""
    rng = np.random.default_rng(0)
    held = rng.random(len(content)) < 0.2
    if held.all() or not held.any():
        held = np.zeros(len(content), dtype=bool)

    def fit(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
        return np.linalg.solve(x.T @ x + alpha * np.eye(x.shape[1]), x.T @ y)

    alpha = RIDGE_ALPHAS[0]
    if held.any():
        errors = [float(np.sum((content[held] @ fit(content[~held], behaviour[~held], a)
                                - behaviour[held]) ** 2)) for a in RIDGE_ALPHAS]
        alpha = RIDGE_ALPHAS[int(np.argmin(errors))]
    return fit(content, behaviour, alpha)


def map_text(text_map: np.ndarray, content: np.ndarray, confidence: float = 1.0
             ) -> np.ndarray:
    """Unit behaviour-space vectors of documents from their content vectors (rows): the
    mapped direction (the learned dimensions) times ``confidence``, the rest of the unit
    length in the last dimension."""
    mapped = np.atleast_2d(content) @ text_map
    norms = np.linalg.norm(mapped, axis=1, keepdims=True)
    direction = confidence * mapped / np.where(norms > 0, norms, 1.0)
    doubt = np.full((len(direction), 1), np.sqrt(max(0.0, 1.0 - confidence ** 2)))
    return np.hstack([direction, doubt])


def _text_map_key(services: Services, version: str) -> str:
    return _key(services, f"text-map-{version}")


_TEXT_MAPS: dict[str, np.ndarray | None] = {}


def text_map(services: Services, version: str) -> np.ndarray | None:
    """The content-to-behaviour map of a training run (None: it made none); per process."""
    key = _text_map_key(services, version)
    if key not in _TEXT_MAPS:
        raw = services.redis.get(key)
        if raw is None:
            return None  # not cached: a run may write it yet
        shape = (services.embedder.dims, services.settings.behaviour_dims - 1)
        _TEXT_MAPS[key] = np.frombuffer(base64.b64decode(raw), dtype="<f4").reshape(
            shape).astype(np.float64)
    return _TEXT_MAPS[key]


def _content_vectors(services: Services) -> dict[str, np.ndarray]:
    query = {"query": {"exists": {"field": "embedding"}}, "_source": ["embedding"]}
    return {h["_id"]: np.asarray(h["_source"]["embedding"], dtype=np.float64)
            for h in services.engine.scan(services.settings.docs_alias, query)}


def positive_sequences(services: Services, before_ms: int | None = None
                       ) -> dict[str, list[str]]:
    """Per user, the documents whose applied events (before ``before_ms``, where given) sum
    to a positive weight, in the time of their first interaction."""
    settings = services.settings
    services.engine.refresh(settings.events_alias)
    query = {"query": applied_events_query(before_ms),
             "_source": ["user_id", "doc_id", "weight", "timestamp"]}
    return positive_sequences_of(hit["_source"] for hit in services.engine.scan(
        settings.events_alias, query))


def positive_pairs(services: Services) -> list[tuple[str, str]]:
    """(user, document) pairs whose applied events sum to a positive weight."""
    return sorted((u, d) for u, docs in positive_sequences(services).items() for d in docs)


def users_per_document(sequences: Mapping[str, list[str]]) -> dict[str, int]:
    """How many users liked each document (``sequences``: per user, the liked documents)."""
    users: dict[str, int] = {}
    for docs in sequences.values():
        for doc in set(docs):
            users[doc] = users.get(doc, 0) + 1
    return users


def frequent_documents(sequences: Mapping[str, list[str]], min_users: int) -> list[str]:
    """The documents at least ``min_users`` users liked, in id order: those a model learns."""
    return sorted(d for d, n in users_per_document(sequences).items() if n >= min_users)


# How many of each user's latest liked documents ``target_coverage`` asks about.
COVERAGE_RECENT = 5


def target_coverage(sequences: dict[str, list[str]], min_users: int,
                    recent: int = COVERAGE_RECENT) -> float:
    """The share of each user's ``recent`` latest liked documents that at least ``min_users``
    *other* users liked (0 without any): how often a model learned from the others could
    have scored what a user took next. Few users, or a long tail, leave most next picks
    without a behaviour vector; a term that can lift only the documents with one then
    crowds out the rest, so search weighs the term by this (``behaviour_support``). Pure:
    no engine."""
    users = users_per_document(sequences)
    latest = [doc for docs in sequences.values() for doc in docs[-recent:]]
    if not latest:
        return 0.0
    return sum(users[doc] - 1 >= min_users for doc in latest) / len(latest)


def _unit(items: list[str], vectors: np.ndarray, dims: int) -> dict[str, np.ndarray]:
    out = np.zeros((len(items), dims))
    out[:, :vectors.shape[1]] = vectors[:, :dims]
    norms = np.linalg.norm(out, axis=1)
    return {d: out[i] / norms[i] for i, d in enumerate(items) if norms[i] > 0}


def item2vec_vectors(sequences: dict[str, list[str]], dims: int, min_users: int,
                     window: int = 20, ns_exponent: float = 0.75,
                     epochs: int = 20) -> dict[str, np.ndarray]:
    """item2vec: skip-gram with negative sampling over each user's time-ordered positive
    interactions (gensim's Word2Vec, one worker and a fixed seed: the same log gives the
    same vectors). Pure: no engine."""
    from gensim.models import Word2Vec

    items = frequent_documents(sequences, min_users)
    keep = set(items)
    sentences = [[d for d in docs if d in keep] for docs in sequences.values()]
    sentences = [s for s in sentences if len(s) > 1]
    if len(items) <= 2 or not sentences:
        return {}
    model = Word2Vec(sentences, vector_size=dims, window=window, sg=1, negative=5,
                     ns_exponent=ns_exponent, min_count=1, epochs=epochs, seed=7, workers=1)
    known = [d for d in items if d in model.wv.key_to_index]
    return _unit(known, np.stack([model.wv[d] for d in known]), dims)


def als_vectors(sequences: dict[str, list[str]], dims: int, min_users: int,
                regularization: float = 0.05) -> dict[str, np.ndarray]:
    """Implicit-feedback ALS (``implicit``) over the user x document positive matrix, with
    ``regularization`` the L2 penalty on the factors; the documents' factors. Pure: no
    engine."""
    from implicit.als import AlternatingLeastSquares
    from scipy import sparse

    items = frequent_documents(sequences, min_users)
    if len(items) <= 2:
        return {}
    column = {d: i for i, d in enumerate(items)}
    rows, cols = [], []
    for n, docs in enumerate(sequences.values()):
        for doc in set(docs):
            if doc in column:
                rows.append(n)
                cols.append(column[doc])
    matrix = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                               shape=(len(sequences), len(items)))
    with threadpool_limits(1, "blas"):  # implicit parallelizes itself; BLAS threads fight it
        model = AlternatingLeastSquares(factors=dims, regularization=regularization,
                                        iterations=15, random_state=7, use_gpu=False)
        model.fit(matrix, show_progress=False)
    factors = np.asarray(model.item_factors)
    return _unit(items, factors, dims)


def learn_vectors(settings: Settings, sequences: dict[str, list[str]]
                  ) -> dict[str, np.ndarray]:
    """The documents' behaviour vectors by the configured model (BEHAVIOUR_MODELS), the
    space's last dimension (kept for vectors mapped from text) 0."""
    model, dims = settings.behaviour_model, settings.behaviour_dims - 1
    min_users = settings.behaviour_min_interactions
    if model == "item2vec":
        learned = item2vec_vectors(sequences, dims, min_users,
                                   settings.behaviour_item2vec_window,
                                   settings.behaviour_item2vec_ns_exponent,
                                   settings.behaviour_item2vec_epochs)
    elif model == "als":
        learned = als_vectors(sequences, dims, min_users, settings.behaviour_als_regularization)
    else:
        learned = item_vectors([(u, d) for u, docs in sequences.items() for d in docs], dims,
                               min_users)
    return {d: np.append(v, 0.0) for d, v in learned.items()}


def current_version(services: Services) -> str | None:
    raw = services.redis.get(behaviour_version_key(services.settings))
    if raw is not None:
        return raw.decode() if isinstance(raw, bytes) else str(raw)
    return None


def train(services: Services, refold: bool = True,
          progress: Callable[[int], None] | None = None,
          before_ms: int | None = None) -> dict[str, Any]:
    """Learn a new version of the documents' behaviour vectors, write them, re-fold users.
    ``before_ms``: learn from the events before that time only (a backtest)."""
    settings = services.settings
    started = time.time()
    services.redis.set(_key(services, "events-at-training"),
                       int(services.redis.get(_key(services, "events")) or 0))
    services.redis.delete(_key(services, "scheduled"))
    services.redis.set(_key(services, "trained-at"), repr(started))
    sequences = positive_sequences(services, before_ms)
    vectors = learn_vectors(settings, sequences)
    coverage = target_coverage(sequences, settings.behaviour_min_interactions)
    result: dict[str, Any] = {"model": settings.behaviour_model,
                              "pairs": sum(map(len, sequences.values())),
                              "documents": len(vectors), "coverage": round(coverage, 4)}
    if not vectors:
        result["trained"] = False
        result["reason"] = (f"too few documents with {settings.behaviour_min_interactions}+ "
                            "users' positive interactions")
        return result
    version = f"{int(started * 1000):015d}"
    if settings.behaviour_text_map:
        # Documents nobody (or too few) interacted with get a vector from their text, so
        # the behaviour term reaches them too; new documents get one at indexing.
        content = _content_vectors(services)
        known = [d for d in vectors if d in content]
        cold = [d for d in content if d not in vectors]
        if len(known) > 2 and cold:
            mapping = fit_text_map(np.stack([content[d] for d in known]),
                                   np.stack([vectors[d][:-1] for d in known]))
            vectors.update(zip(cold, map_text(mapping, np.stack([content[d] for d in cold]),
                                              settings.behaviour_text_map_confidence),
                               strict=True))
            services.redis.set(_text_map_key(services, version),
                               base64.b64encode(mapping.astype("<f4").tobytes()))
            result["from_text"] = len(cold)
    stale = [h["_id"] for h in services.engine.scan(
        settings.docs_alias, {"query": {"exists": {"field": "behaviour_version"}},
                              "_source": False}) if h["_id"] not in vectors]
    actions = [{"_op_type": "update", "_index": settings.docs_alias, "_id": doc_id,
                "retry_on_conflict": 3,
                "doc": {"behaviour": [round(float(x), 6) for x in vector],
                        "behaviour_version": version}}
               for doc_id, vector in vectors.items()]
    actions += [{"_op_type": "update", "_index": settings.docs_alias, "_id": doc_id,
                 "retry_on_conflict": 3, "doc": {"behaviour": None, "behaviour_version": None}}
                for doc_id in stale]
    # A document deleted since the log was read has no vector to take.
    services.engine.bulk(actions).raise_if_refused("behaviour vectors not written",
                                                   handled=[404])
    services.engine.refresh(settings.docs_alias)
    previous = current_version(services)
    # Before the version: a search that reads the new version reads its coverage.
    services.redis.set(behaviour_coverage_key(settings), repr(coverage))
    services.redis.set(behaviour_version_key(settings), version)
    if previous is not None:
        services.redis.delete(_text_map_key(services, previous))
    services.doc_vectors.clear()
    services.behaviour_versions.clear()
    result.update(trained=True, version=version, cleared=len(stale),
                  train_s=round(time.time() - started, 2))
    if refold:
        rebuilt, deferred = rebuild_all(services, progress)
        result.update(users_refolded=rebuilt, users_deferred=len(deferred))
    return result
