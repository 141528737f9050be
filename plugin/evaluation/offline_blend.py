"""The blends that are sums of terms recomputed in this process, for tuning.

Tuning scores hundreds of weight candidates on the validation queries. Through the engine
that is one search per candidate and query, which is why tuning once scored a sample of 300.
Here each query's terms are fetched once, each term's search on its own at weight 1, and a
candidate's blend is then the strategy's own arithmetic:

- ``linear_retriever``: each retriever's hits and scores over the window, as the ``linear``
  retriever receives them, min-max normalized, weighted and summed;
- ``knn_linear``: BM25 over the query's best score and popularity on every match, and each
  kNN clause's similarity on its k nearest, weighted and summed as the engine adds clauses;
- ``script_score``: the same, but its script's BM25 capped at 1 and its content terms
  scored by the script on every match but the held-neutral ones;

plus the seen share on the held-neutral matches (``keep``: the seen documents at their
places in the blend without the user). The query's inputs, the weights a user gets and the
documents held neutral come from the search layer's own functions, each term's search and
how its scores are weighed from the strategy's own (``Strategy.term_searches``,
``Strategy.term_scores``).

Each term's search is kept by what it asked (``TermStore``): another user, profile or
candidate asking the same search (the same words, vector and held-out documents) reuses it.
The terms a behaviour training rewrites stay with one ``OfflineBlend``; the others may be
shared by the blends of one deployment's behaviour candidates (each training re-indexes
the documents, which moves BM25's statistics and the kNN graphs only a little).

The user terms' kNN searches (the user's content and behaviour vectors over the query's
matches, less the held-neutral documents) may be scored here instead (``LocalVectors``):
each document's vectors are read once, and a search is then one exact nearest-neighbour
pass over the matches' rows, scored as the engine scores a cosine field. A behaviour or
half-life candidate changes only these terms, so its choice no longer waits on the
engine's graph searches.

The engine's ranks and these agree up to ties and the kNN search's approximation; the
evaluation reports the agreement on every validation query, and every figure it publishes
comes from the engine.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from plugin.config import BLEND_TERMS, USER_TERMS
from plugin.documents import BEHAVIOUR_FIELD
from plugin.engine.base import JSON, cosine_knn_score
from plugin.evaluation import data
from plugin.interest import DocVector
from plugin.progress import progress as progress_bar
from plugin.search import (
    IDS_FROM_DOC_VALUES,
    BlendWeights,
    QueryInputs,
    UserVectors,
    blend_plan,
    held_neutral,
    named_hits,
    query_inputs,
    seen_places,
)
from plugin.services import Services
from plugin.strategies import STRATEGIES as BUILDERS
from plugin.strategies import QueryContext, seen_boost

STRATEGIES = tuple(name for name, strategy in BUILDERS.items() if strategy.sums_terms)
# A term scored on every match (knn_linear's words) fetches each of them (the engine's default
# result window; more raises).
MATCHES = 10_000
# Every term, each a weight's name (a column of QueryTerms.scores).
TERMS = BLEND_TERMS
# Every term, and the seen share, at 1: each term's own scores, and the held-neutral matches.
UNIT = BlendWeights(**dict.fromkeys(TERMS, 1.0), seen=1.0)
# The terms scored on the documents' behaviour vectors, which each training rewrites.
BEHAVIOUR_TERMS = ("behaviour", "behaviour_short")
FETCH_THREADS = 4

# One term search's hits: their ids, and their scores as the blend weighs them.
TermList = tuple[list[str], npt.NDArray[np.float64]]


@dataclass
class TermStore:
    """Each term search's hits by what it asked: the strategy, the term and the whole
    request body (words, vector, scope, held-out documents). Valid while the documents the
    searches read stay as they were."""

    found: dict[bytes, TermList] = field(default_factory=dict)
    # Each query text's inputs (vector, best BM25), as the search layer's Redis cache holds
    # them: asked once here rather than once per user, profile and candidate.
    inputs: dict[tuple[str, str, str, bool], QueryInputs] = field(default_factory=dict)

    def query_inputs(self, services: Services, text: str, need_max_bm25: bool) -> QueryInputs:
        key = (services.settings.docs_alias, services.embedder.model_name, text, need_max_bm25)
        if (kept := self.inputs.get(key)) is None:
            kept = self.inputs[key] = query_inputs(services, text, {},
                                                   need_max_bm25=need_max_bm25)
        return kept

    @staticmethod
    def key(strategy: str, name: str, body: JSON) -> bytes:
        asked = json.dumps([strategy, name, body], sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(asked.encode(), digest_size=16).digest()


@dataclass(frozen=True)
class LocalVectors:
    """One deployment's documents' vectors, read once, for the user terms' kNN searches
    scored in this process: exact, where the engine's graph search is approximate."""

    ids: list[str]
    row: dict[str, int]
    # Per vector field: each document's unit vector (a row of zeros where it has none), in
    # float32 as the engine stores and scores them (half the memory to stream per search),
    # and which documents have one.
    unit: dict[str, npt.NDArray[np.float32]]
    has: dict[str, npt.NDArray[np.bool_]]

    @classmethod
    def of(cls, docs: Mapping[str, DocVector]) -> LocalVectors:
        ids = [sys.intern(d) for d in sorted(docs)]
        unit: dict[str, npt.NDArray[np.float32]] = {}
        has: dict[str, npt.NDArray[np.bool_]] = {}
        for name, vectors in (("embedding", [docs[d].embedding for d in ids]),
                              (BEHAVIOUR_FIELD, [docs[d].behaviour for d in ids])):
            present = np.array([v is not None for v in vectors], dtype=bool)
            dims = next((len(np.asarray(v)) for v in vectors if v is not None), 0)
            matrix = np.zeros((len(ids), dims))
            if present.any():
                matrix[present] = np.stack([np.asarray(v, dtype=np.float64)
                                            for v in vectors if v is not None])
            norms = np.linalg.norm(matrix, axis=1)
            has[name] = present & (norms > 0)
            unit[name] = (matrix / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)
        return cls(ids, {d: i for i, d in enumerate(ids)}, unit, has)

    def rows(self, ids: Iterable[str]) -> npt.NDArray[np.bool_]:
        """The documents among ``ids`` (those read), as a mask over the rows."""
        mask = np.zeros(len(self.ids), dtype=bool)
        mask[[self.row[d] for d in ids if d in self.row]] = True
        return mask

    def scope(self, field_name: str, allowed: npt.NDArray[np.bool_]) -> LocalScope:
        """The ``allowed`` documents that have the field, and their unit vectors (gathered
        once for every user term on the field)."""
        candidates = np.flatnonzero(allowed & self.has[field_name])
        return LocalScope(candidates, self.unit[field_name][candidates])

    def knn(self, scope: LocalScope, vector: Sequence[float], k: int) -> TermList:
        """The ``k`` documents of ``scope`` nearest ``vector``, nearest first, scored as the
        engine's kNN search scores them."""
        candidates = scope.candidates
        query = np.asarray(vector, dtype=np.float64)
        norm = float(np.linalg.norm(query))
        if not candidates.size or k <= 0 or norm == 0:
            return [], np.zeros(0)
        cosine = (scope.unit @ (query / norm).astype(np.float32)).astype(np.float64)
        nearest = (np.argpartition(-cosine, k - 1)[:k] if len(candidates) > k
                   else np.arange(len(candidates)))
        nearest = nearest[np.argsort(-cosine[nearest], kind="stable")]
        return [self.ids[i] for i in candidates[nearest]], cosine_knn_score(cosine[nearest])


@dataclass(frozen=True)
class LocalScope:
    """The rows a user term's kNN search may return, and their unit vectors."""

    candidates: npt.NDArray[np.intp]
    unit: npt.NDArray[np.float32]


@dataclass
class QueryTerms:
    """One query's terms for one user: each document any term returned (and the held-neutral
    matches), with each term's score as the blend weighs it (``linear_retriever``: min-max
    normalized; ``knn_linear``: BM25 over the best score, the others as the engine scores
    them), 0 where it missed the document."""

    inputs: QueryInputs
    user: UserVectors
    ids: list[str]
    # (documents, TERMS): the engine's float32 scores, held as float64 so that a blend's
    # product with its weights, asked for every candidate weight, needs no cast.
    scores: npt.NDArray[np.float64]
    present: npt.NDArray[np.bool_]  # (documents, TERMS): the term returned the document
    seen: npt.NDArray[np.bool_]  # (documents,): a held-neutral match
    # The rows asked for: tuning asks one target's rank under many weights (a map of every
    # document's row cost more memory than the scores).
    asked: dict[str, int | None] = field(default_factory=dict, init=False, repr=False)
    # The first documents without the user, for the last blend asked: placing the seen
    # documents asks for them under every user weight a tuning step tries, and they depend
    # on none of those (one kept: a step that changes them misses anyway).
    plain_tops: tuple[tuple[float, ...], list[str]] | None = field(
        default=None, init=False, repr=False)

    def plain_top(self, weights: BlendWeights, size: int) -> list[str]:
        """``top_ids`` without the user (``weights``' user terms and seen share are 0)."""
        key = (weights.bm25, weights.query, weights.popularity, float(size))
        if self.plain_tops is None or self.plain_tops[0] != key:
            self.plain_tops = (key, top_ids(self, weights, size))
        return self.plain_tops[1]

    def row_of(self, doc: str) -> int | None:
        if doc not in self.asked:
            try:
                self.asked[doc] = self.ids.index(doc)
            except ValueError:
                self.asked[doc] = None
        return self.asked[doc]


@functools.lru_cache(maxsize=4096)
def _term_weights(weights: BlendWeights) -> npt.NDArray[np.float64]:
    """``weights`` as a vector over TERMS (few distinct plans recur over a tuning step's
    queries: a user with or without behaviour, a query's word count)."""
    vector = np.array([getattr(weights, t) for t in TERMS])
    vector.flags.writeable = False
    return vector


def blend(terms: QueryTerms, weights: BlendWeights
          ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """Which documents the blend under ``weights`` (the plan's: user terms already scaled)
    holds, and their scores. A term of weight 0 is not in the request, so it recalls none;
    the words are always in it."""
    weight = _term_weights(weights)
    recall = weight > 0
    recall[TERMS.index("bm25")] = True
    candidates = terms.present[:, recall].any(axis=1)
    score = terms.scores @ weight
    boost = seen_boost(terms.user, weights)
    if boost > 0:
        candidates = candidates | terms.seen
        score = score + terms.seen * boost
    return candidates, score


def top_ids(terms: QueryTerms, weights: BlendWeights, size: int) -> list[str]:
    """The first ``size`` documents of the blend, best first (ties in the order fetched)."""
    candidates, score = blend(terms, weights)
    index = np.flatnonzero(candidates)
    if size <= 0:
        return []
    if len(index) > size:
        # Only the documents at or above the size-th best score can be among the first
        # ``size``: sorting those alone gives the full sort's first ``size`` (ties stay in
        # the order fetched).
        values = score[index]
        threshold = np.partition(values, len(values) - size)[len(values) - size]
        index = index[values >= threshold]
    order = index[np.argsort(-score[index], kind="stable")][:size]
    return [terms.ids[i] for i in order]


def rank_of(terms: QueryTerms, weights: BlendWeights, doc: str, size: int) -> int | None:
    """``doc``'s 1-based place in the blend (None past ``size``), without sorting it."""
    at = terms.row_of(doc)
    if at is None:
        return None
    candidates, score = blend(terms, weights)
    if not candidates[at]:
        return None
    ahead = candidates & (score > score[at])
    ties = candidates[:at] & (score[:at] == score[at])
    rank = 1 + int(ahead.sum()) + int(ties.sum())
    return rank if rank <= size else None


@dataclass
class OfflineBlend:
    """Each query's terms, fetched once per strategy, user profile and seen policy, and the
    blend's ranks for any weights (the ``STRATEGIES`` only)."""

    window: int  # the vector terms' window (settings.personal_candidates)
    size: int  # how many hits a ranked list keeps
    # The term searches but the behaviour terms': a store another blend on the same
    # deployment may share (the text, content vectors and popularity unchanged).
    shared: TermStore = field(default_factory=TermStore)
    # The behaviour terms' searches, this blend's own (its deployment's behaviour vectors).
    own: TermStore = field(default_factory=TermStore)
    # Where given, the user terms' kNN searches are scored in this process on these.
    local: LocalVectors | None = None
    cached: dict[tuple[object, ...], QueryTerms] = field(default_factory=dict)

    def forget(self, profiles: set[str]) -> None:
        """Drops the terms fetched under these profiles (their vectors changed); each term
        search stays kept by what it asked."""
        self.cached = {k: v for k, v in self.cached.items() if k[PROFILE_AT] not in profiles}

    def rename(self, profile: str, to: str) -> None:
        """The terms fetched under ``profile`` now answer for ``to`` (the same vectors)."""
        self.cached = {(*k[:PROFILE_AT], to, *k[PROFILE_AT + 1:]) if k[PROFILE_AT] == profile
                       else k: v
                       for k, v in self.cached.items()}

    def _fetch(self, services: Services, strategy: str, query: data.Query, user: UserVectors,
               held: tuple[str, ...]) -> QueryTerms:
        engine, settings = services.engine, services.settings
        inputs = self.shared.query_inputs(services, query.text,
                                          BUILDERS[strategy].needs_max_bm25)
        ctx = QueryContext.for_query(engine, query.text, {}, weights=UNIT, vector=inputs.vector,
                                     max_bm25=inputs.max_bm25, user=user, size=self.size,
                                     offset=0, personal_k=self.window, seen=held)
        builder = BUILDERS[strategy]  # term_searches raises where it is no sum of terms
        lists: dict[str, TermList] = {}
        wanted: list[tuple[str, JSON, TermStore, bytes]] = []
        here = {t.name: t for t in ctx.user_terms} if self.local is not None else {}
        scope: npt.NDArray[np.bool_] | None = None
        scopes: dict[str, LocalScope] = {}
        for name, body in builder.term_searches(ctx, MATCHES):
            store = self.own if name in BEHAVIOUR_TERMS else self.shared
            key = TermStore.key(strategy, name, body)
            if (kept := store.found.get(key)) is not None:
                lists[name] = kept
            elif name in here and self.local is not None:
                # A user term's kNN search over the personal scope, scored here.
                if scope is None:
                    scope = self._personal_scope(services, ctx)
                term = here[name]
                if term.field not in scopes:
                    scopes[term.field] = self.local.scope(term.field, scope)
                found, raw = self.local.knn(scopes[term.field], term.vector, int(body["size"]))
                lists[name] = store.found[key] = (
                    found, np.array(builder.term_scores(name, list(raw), ctx)))
            else:
                wanted.append((name, body, store, key))
        bodies = [{**body, **IDS_FROM_DOC_VALUES} for _, body, _, _ in wanted]
        # The seen clause's matches (none where no user term applies: then no share either).
        seen_clause = ctx.seen_clause()
        if seen_clause is not None:
            bodies.append({"size": len(held), **IDS_FROM_DOC_VALUES, "query": seen_clause})
        answers = engine.msearch(settings.docs_alias, bodies) if bodies else []
        for answer in answers:
            if "error" in answer:
                raise RuntimeError(f"the engine refused a term's search: {answer['error']}")
        for (name, body, store, key), answer in zip(wanted, answers, strict=False):
            hits = named_hits(answer)
            if len(hits) >= MATCHES and body.get("size") == MATCHES:
                raise RuntimeError(f"more than {MATCHES} documents match {query.text!r}")
            values = np.array(builder.term_scores(name, [float(h["_score"]) for h in hits],
                                                  ctx))
            # Interned: the same ids recur in thousands of kept searches.
            lists[name] = store.found[key] = ([sys.intern(h["_id"]) for h in hits], values)
        seen_ids = ({h["_id"] for h in named_hits(answers[-1])} if seen_clause is not None
                    else set())
        ids: dict[str, int] = {}
        for found, _ in lists.values():
            for doc in found:
                ids.setdefault(doc, len(ids))
        for doc in sorted(seen_ids):
            ids.setdefault(doc, len(ids))
        scores = np.zeros((len(ids), len(TERMS)), dtype=np.float32)
        present = np.zeros((len(ids), len(TERMS)), dtype=bool)
        for name, (found, values) in lists.items():
            rows = [ids[doc] for doc in found]
            scores[rows, TERMS.index(name)] = values
            present[rows, TERMS.index(name)] = True
        seen = np.array([doc in seen_ids for doc in ids], dtype=bool)
        return QueryTerms(inputs, user, list(ids), scores.astype(np.float64), present, seen)

    def _personal_scope(self, services: Services, ctx: QueryContext) -> npt.NDArray[np.bool_]:
        """The rows a user term may score (``QueryContext.personal_scope``): the query's
        matches (one search per query, kept like a term's), less the held-neutral ones."""
        assert self.local is not None
        body: JSON = {"size": MATCHES, **IDS_FROM_DOC_VALUES, "query": ctx.matching}
        key = TermStore.key("", "matches", body)
        if (kept := self.shared.found.get(key)) is None:
            hits = named_hits(services.engine.search(services.settings.docs_alias, body))
            if len(hits) >= MATCHES:
                raise RuntimeError(f"more than {MATCHES} documents match the query")
            kept = self.shared.found[key] = ([sys.intern(h["_id"]) for h in hits],
                                             np.zeros(len(hits)))
        scope = self.local.rows(kept[0])
        scope[[self.local.row[d] for d in ctx.seen if d in self.local.row]] = False
        return scope

    def terms(self, services: Services, strategy: str, query: data.Query, profile: str | None,
              user: UserVectors) -> QueryTerms:
        held = held_neutral(services, user)
        key = _key(strategy, query, profile, held)
        if key not in self.cached:
            self.cached[key] = self._fetch(services, strategy, query, user, held)
        return self.cached[key]

    def prefetch(self, services: Services, strategy: str, queries: Sequence[data.Query],
                 profile: str | None,
                 vectors: Callable[[data.Query], UserVectors] | None) -> None:
        """Every query's terms, a few fetches in flight (a query's plain terms first, which
        later users of the same text reuse)."""
        missing = [q for q in queries if not self._has(
            services, strategy, q, profile, vectors(q) if vectors else None)]
        if not missing:
            return
        first = {q.text: q for q in missing}  # one per text first: its plain terms are shared
        rest = [q for q in missing if first[q.text] is not q]

        def one(q: data.Query) -> None:
            self.terms(services, strategy, q, profile, vectors(q) if vectors else UserVectors())

        with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:
            for batch in (list(first.values()), rest):
                list(progress_bar(pool.map(one, batch), total=len(batch),
                                  desc="fetching terms", unit="query", leave=False))

    def _has(self, services: Services, strategy: str, query: data.Query, profile: str | None,
             user: UserVectors | None) -> bool:
        held = held_neutral(services, user or UserVectors())
        return _key(strategy, query, profile, held) in self.cached

    def ranks(self, services: Services, strategy: str, weights: BlendWeights | None,
              profile: str | None, vectors: Callable[[data.Query], UserVectors] | None,
              queries: Sequence[data.Query]) -> list[int | None]:
        """Each query's target rank (1-based; None past ``size``) in the blend ``search``
        would send with this ``strategy``, these ``weights`` (None: the configured ones) and
        profile."""
        self.prefetch(services, strategy, queries, profile, vectors)
        out: list[int | None] = []
        for q in queries:
            user = vectors(q) if vectors else UserVectors()
            terms = self.terms(services, strategy, q, profile, user)
            plan, held, keep = blend_plan(services, strategy, user, terms.inputs, weights)
            if not keep:
                out.append(rank_of(terms, plan, q.movie_id, self.size))
                continue
            no_user = replace(plan, **dict.fromkeys(USER_TERMS, 0.0), seen=0.0)
            ranked = [h["_id"] for h in seen_places(
                services.settings, [{"_id": i} for i in top_ids(terms, plan, self.size)],
                [{"_id": i} for i in terms.plain_top(no_user, self.size)], set(held),
                self.size)]
            out.append(next((n for n, doc in enumerate(ranked, 1) if doc == q.movie_id), None))
        return out


# Where a fetch's key (``_key``) holds its profile's name.
PROFILE_AT = 5


def _key(strategy: str, query: data.Query, profile: str | None, held: tuple[str, ...]
         ) -> tuple[object, ...]:
    """A query's fetch: the strategy, the user's profile, and whether the user terms leave
    out the seen."""
    return (strategy, query.user_id, query.movie_id, query.text, query.timestamp, profile,
            bool(held))
