"""The blend strategies: one object each, owning its engine request, what it needs from the
engine, and whether it needs the query's best BM25 score. The request shapes are described in
plugin/search.py's docstring; every builder takes one :class:`QueryContext`.

The clauses the strategies share (the query's words, filters, popularity, the user's terms)
live here too, so the ``_search`` proxy builds its blend from the same pieces.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from plugin.config import BLEND_STRATEGIES, USER_TERMS
from plugin.documents import BEHAVIOUR_FIELD, POPULARITY_FIELD
from plugin.engine import JSON, Engine

TEXT_FIELDS = ["title^2", "tags.text", "body"]
FILTER_FIELDS = ("tags", "doc_id")


@dataclass(frozen=True)
class BlendWeights:
    """One weight per term (config.BLEND_TERMS) and ``ambiguity`` (config.WEIGHT_NAMES); the
    shipped ones come from the ranking file."""

    bm25: float = 1.0
    query: float = 0.0
    popularity: float = 0.0
    interest_long: float = 0.0
    interest_short: float = 0.0
    behaviour: float = 0.0
    behaviour_short: float = 0.0
    # What a document the user already interacted with gets in place of its own user terms
    # (seen_policy "neutral"): this share of the user terms' total weight, a typical boost
    # rather than its own high one, so the personal boost goes to what the user has not seen.
    seen: float = 0.0
    # How much knowing many documents turns a user's seen share down: the share is scaled by
    # (n / SEEN_FEW)^-seen_crowding for a user with n > SEEN_FEW seen documents. Many of them
    # match any query, and each lifted one takes a place a new document could have. 0: every
    # user alike.
    seen_crowding: float = 0.0
    # How much a specific query turns personalization down: the user terms are scaled by
    # words^-ambiguity (query length, the classic sign of specificity: "comedy" leaves the
    # choice to the user, "dark comedy about a heist" much less). 0: every query alike.
    ambiguity: float = 0.0

    def behaviour_scaled(self, factor: float) -> BlendWeights:
        """The behaviour terms scaled by ``factor`` (the model's support); the seen share,
        a share of the user terms, follows."""
        if factor == 1.0:
            return self
        return _scaled(self, ("behaviour", "behaviour_short"), factor)

    def personal_scaled(self, factor: float) -> BlendWeights:
        """The user terms scaled by ``factor`` (the query's words^-ambiguity); the seen
        documents' boost, a share of them, follows."""
        return _scaled(self, USER_TERMS, factor)


@dataclass
class UserVectors:
    long: list[float] | None = None
    short: list[float] | None = None
    behaviour: list[float] | None = None
    behaviour_version: str | None = None
    # The documents the user interacted with positively, most recent first (bounded).
    seen: tuple[str, ...] = ()
    behaviour_short: list[float] | None = None
    # The content model ``long`` and ``short`` were folded with ("": the configured one).
    content_version: str = ""

    @property
    def empty(self) -> bool:
        return (self.long is None and self.short is None and self.behaviour is None
                and self.behaviour_short is None)

    def without_behaviour(self) -> UserVectors:
        """The content vectors only (behaviour folded in another training run's space)."""
        return replace(self, behaviour=None, behaviour_short=None)

    def without_content(self) -> UserVectors:
        """The behaviour vectors only (content folded with another model, before a switch)."""
        return replace(self, long=None, short=None)


def text_query(query: str, boost: float = 1.0) -> JSON:
    return {"multi_match": {"query": query, "fields": TEXT_FIELDS, "boost": boost}}


def filter_clauses(filters: Mapping[str, Sequence[str]]) -> list[JSON]:
    return [{"terms": {name: list(values)}} for name, values in filters.items()]


def popularity_clause(weight: float) -> JSON:
    """``weight * log10(1 + popularity)``, 0 for documents without: script-free on every
    engine (field_value_factor is core; rank_feature needs a module not every build has).
    The weight is the function's: under ``boost_mode: replace`` both engines drop the
    function_score query's own ``boost`` with the query score it replaces."""
    return {"function_score": {
        "query": {"exists": {"field": POPULARITY_FIELD}},
        "functions": [{"field_value_factor": {"field": POPULARITY_FIELD, "modifier": "log1p",
                                              "missing": 0}, "weight": weight}],
        "boost_mode": "replace"}}


@dataclass(frozen=True)
class UserTerm:
    name: str  # its weight's name (BlendWeights)
    field: str
    vector: list[float]
    weight: float


def user_terms(user: UserVectors, w: BlendWeights) -> list[UserTerm]:
    """Each user term that applies: a vector the user has, with a weight above 0."""
    terms = [("interest_long", "embedding", user.long), ("interest_short", "embedding", user.short),
             ("behaviour", BEHAVIOUR_FIELD, user.behaviour),
             ("behaviour_short", BEHAVIOUR_FIELD, user.behaviour_short)]
    return [UserTerm(name, f, v, getattr(w, name)) for name, f, v in terms
            if v is not None and getattr(w, name) > 0]


# Up to this many seen documents a user's seen share is whole (BlendWeights.seen_crowding):
# so few rarely crowd a query's first page.
SEEN_FEW = 20


@functools.lru_cache(maxsize=4096)
def _scaled(weights: BlendWeights, terms: tuple[str, ...], factor: float) -> BlendWeights:
    """``weights`` with ``terms`` scaled by ``factor`` (the same few plans recur over many
    searches and, in tuning, over every query)."""
    return replace(weights, **{t: getattr(weights, t) * factor for t in terms})


def seen_share(seen: int, w: BlendWeights) -> float:
    """The seen share of a user with ``seen`` seen documents: ``w.seen``, turned down by
    ``w.seen_crowding`` beyond SEEN_FEW of them."""
    if seen <= SEEN_FEW or w.seen_crowding <= 0:
        return w.seen
    return w.seen * float((seen / SEEN_FEW) ** -w.seen_crowding)


def seen_boost(user: UserVectors, w: BlendWeights) -> float:
    """What a held-neutral document gets in place of its own user terms: the user's seen
    share (``seen_share``) of the applied user terms' total weight."""
    return seen_share(len(user.seen), w) * sum(t.weight for t in user_terms(user, w))


@dataclass(frozen=True)
class KnnClause(UserTerm):
    """One weighted kNN clause of ``knn_linear`` (a user term's or the query vector's): its
    ``personal_k`` nearest in ``scope``."""

    scope: JSON | None = None

    def add_to(self, body: JSON, ctx: QueryContext, boost: float) -> None:
        ctx.engine.add_knn(body, field_name=self.field, vector=self.vector, k=ctx.personal_k,
                           boost=boost, filter_query=self.scope)

    def alone(self, ctx: QueryContext) -> tuple[str, JSON]:
        """Its term's search: the clause on its own at weight 1, over its k."""
        body: JSON = {"size": ctx.personal_k}
        self.add_to(body, ctx, 1.0)
        return self.name, body


@dataclass(frozen=True)
class QueryContext:
    """One search as a request builder sees it.

    ``words`` is the clause scored as BM25; ``matching`` the documents personalization may
    re-order (the words with the filters); ``scope`` what the query vector may recall beyond
    the words (the filters; None: anything). The ``_search`` proxy sets all three to the
    client's own query, so it never returns a document that query does not match.
    """

    engine: Engine
    words: JSON
    matching: JSON
    scope: JSON | None
    filters: list[JSON]
    weights: BlendWeights
    vector: list[float]  # the query's embedding
    max_bm25: float  # the best BM25 score of ``words`` (0: unknown)
    user: UserVectors
    size: int
    offset: int
    personal_k: int  # how many documents a vector term covers exactly, nearest first
    # Documents held neutral in the user terms (seen_policy "neutral"; empty: none).
    seen: tuple[str, ...] = ()

    @property
    def user_terms(self) -> list[UserTerm]:
        return user_terms(self.user, self.weights)

    @property
    def personal_scope(self) -> JSON:
        """What the user terms may score: the matches, less the documents held neutral."""
        if not self.seen:
            return self.matching
        return {"bool": {"filter": [self.matching],
                         "must_not": [{"ids": {"values": list(self.seen)}}]}}

    def seen_clause(self) -> JSON | None:
        """The held-neutral documents among the matches, each scored ``weights.seen`` times
        the applied user terms' total weight (None where nothing is held neutral, no user
        term applies, or the share is 0)."""
        boost = seen_boost(self.user, self.weights)
        if not self.seen or boost <= 0:
            return None
        return {"constant_score": {"filter": {"bool": {"filter": [
            self.matching, {"ids": {"values": list(self.seen)}}]}}, "boost": boost}}

    @classmethod
    def for_query(cls, engine: Engine, query: str, filters: Mapping[str, Sequence[str]], *,
                  weights: BlendWeights, vector: list[float], max_bm25: float,
                  user: UserVectors, size: int, offset: int, personal_k: int,
                  seen: Sequence[str] = ()) -> QueryContext:
        """The context of an ordinary query: its words on the text fields, with filters."""
        clauses = filter_clauses(filters)
        words = text_query(query)
        return cls(engine, words, {"bool": {"must": [words], "filter": clauses}},
                   {"bool": {"filter": clauses}} if clauses else None, clauses, weights,
                   vector, max_bm25, user, size, offset, personal_k, tuple(seen))

    def words_with_popularity(self, boost: float) -> JSON:
        """The words' BM25 scaled by ``boost``, plus the popularity term on matches."""
        clause: JSON = {"bool": {"must": [self.words], "boost": boost}}
        if self.weights.popularity > 0:
            # The popularity term keeps its own weight: the boost applies to the words.
            clause = {"bool": {"must": [clause],
                               "should": [popularity_clause(self.weights.popularity)]}}
        return clause


def words_and_popularity(ctx: QueryContext, matches: int) -> list[tuple[str, JSON]]:
    """The words' BM25 and popularity, each searched on its own over up to ``matches``
    matches: the terms ``knn_linear`` and ``script_score`` score on every match."""
    return [("bm25", {"size": matches, "query": {"bool": {"must": [ctx.words],
                                                          "filter": ctx.filters}}}),
            ("popularity", {"size": matches, "query": {"bool": {
                "filter": [ctx.matching], "should": [popularity_clause(1.0)]}}})]


class Strategy(ABC):
    """One way to send the blend to the engine."""

    name: ClassVar[str]
    needs: ClassVar[str]  # what it needs from the engine, to say so when that is missing
    # Whether BM25 is divided by the query's best score (one extra cheap request, cached).
    needs_max_bm25: ClassVar[bool] = True

    @abstractmethod
    def available(self, engine: Engine, index: str) -> bool:
        """Whether this engine can run it (``index``: where a capability probe may ask)."""

    @abstractmethod
    def request(self, ctx: QueryContext) -> JSON:
        """The engine request (size and from included) for this search."""

    # Whether its blend is a weighted sum of terms the engine can score one at a time
    # (``term_searches``, ``term_scores``): the evaluation then recomputes it offline.
    sums_terms: ClassVar[bool] = False

    def term_searches(self, ctx: QueryContext, matches: int) -> list[tuple[str, JSON]]:
        """(name, search) of each term on its own at weight 1 (a weight's name each); a
        search over every match asks for up to ``matches``."""
        raise NotImplementedError(f"{self.name} is not a sum of terms searched one at a time")

    def term_scores(self, name: str, scores: Sequence[float], ctx: QueryContext
                    ) -> list[float]:
        """One term's hits' scores (in the order returned) as the blend weighs them."""
        return list(scores)


# The ``linear`` retriever's min-max normalizer keeps a term's scores where all are equal.
MIN_MAX_EPSILON = 1e-6


def min_max(scores: Sequence[float]) -> list[float]:
    """The ``linear`` retriever's min-max normalizer over one term's hits."""
    if not scores:
        return []
    low, high = min(scores), max(scores)
    if high - low < MIN_MAX_EPSILON:
        return list(scores)
    return [(v - low) / (high - low) for v in scores]


class ScriptScore(Strategy):
    """BM25 matches scored by one Painless script (a constant of the engine module) on BM25
    and the user's content terms, which it scores exactly on every match; the query vector,
    popularity and behaviour are clauses beside it, as in ``knn_linear``."""

    name = "script_score"
    needs = "Painless"

    def available(self, engine: Engine, index: str) -> bool:
        return engine.has_painless()

    @staticmethod
    def script(ctx: QueryContext, bm25: float, long: float, short: float) -> JSON:
        """The blend's script (a constant source) with these weights on BM25 and the user's
        long and short content vectors (0 where the user has none)."""
        user = ctx.user
        return {"source": ctx.engine.blend_script("embedding"), "params": {
            "a": bm25, "max_bm25": ctx.max_bm25 if ctx.max_bm25 > 0 else 1.0,
            "c": long if user.long is not None else 0.0,
            "ul": user.long if user.long is not None else ctx.vector,
            "d": short if user.short is not None else 0.0,
            "us": user.short if user.short is not None else ctx.vector,
        }}

    def request(self, ctx: QueryContext) -> JSON:
        w = ctx.weights
        matches: JSON = {"bool": {"must": [ctx.words], "filter": ctx.filters}}
        script = self.script(ctx, w.bm25, w.interest_long, w.interest_short)
        scored: JSON = {"script_score": {"query": matches, "script": script}}
        if ctx.seen:
            # The same script twice: held-neutral documents score without the user's terms.
            seen = {"ids": {"values": list(ctx.seen)}}
            plain = self.script(ctx, w.bm25, 0.0, 0.0)
            scored = {"bool": {"should": [
                {"script_score": {"query": {"bool": {"must": [matches],
                                                      "must_not": [seen]}}, "script": script}},
                {"script_score": {"query": {"bool": {"must": [matches], "filter": [seen]}},
                                  "script": plain}}]}}
        # Popularity and the seen share add to the script's score on the matches; the query
        # vector's and the behaviour's kNN clauses are knn_linear's own (the query vector's
        # may recall documents beyond the words, within the scope).
        should: list[JSON] = [scored]
        if w.popularity > 0:
            should.append({"bool": {"filter": [ctx.matching],
                                    "should": [popularity_clause(w.popularity)]}})
        if (seen_clause := ctx.seen_clause()) is not None:
            should.append(seen_clause)
        body: JSON = {"size": ctx.size, "from": ctx.offset,
                      "query": {"bool": {"should": should, "minimum_should_match": 1}}}
        for clause in self.knn_clauses(ctx):
            clause.add_to(body, ctx, clause.weight)
        return body

    def knn_clauses(self, ctx: QueryContext) -> list[KnnClause]:
        """The query vector's kNN clause over the scope and the behaviour terms' over the
        personal scope (the content terms are the script's), each with a weight above 0."""
        clauses = [KnnClause("query", "embedding", ctx.vector, ctx.weights.query, ctx.scope)]
        clauses += [KnnClause(t.name, t.field, t.vector, t.weight, ctx.personal_scope)
                    for t in ctx.user_terms if t.field == BEHAVIOUR_FIELD]
        return [c for c in clauses if c.weight > 0]

    sums_terms = True

    def term_searches(self, ctx: QueryContext, matches: int) -> list[tuple[str, JSON]]:
        """The terms ``request`` adds up: the script's BM25 on every match and each content
        similarity on every match but the held-neutral ones (the same script, the other
        weights 0), popularity on every match, each kNN clause over its k."""
        searches = words_and_popularity(ctx, matches)
        for term in ctx.user_terms:
            if term.field != BEHAVIOUR_FIELD:
                long = float(term.name == "interest_long")
                searches.append((term.name, {"size": matches, "query": {"script_score": {
                    "query": ctx.personal_scope,
                    "script": self.script(ctx, 0.0, long, 1.0 - long)}}}))
        return searches + [clause.alone(ctx) for clause in self.knn_clauses(ctx)]

    def term_scores(self, name: str, scores: Sequence[float], ctx: QueryContext
                    ) -> list[float]:
        """BM25 over the query's best score, at most 1, as the script weighs it; the rest
        as scored."""
        if name == "bm25":
            best = ctx.max_bm25 if ctx.max_bm25 > 0 else 1.0
            return [min(1.0, v / best) for v in scores]
        return list(scores)


class LinearRetriever(Strategy):
    """One ``linear`` retriever over BM25, popularity and one ``knn`` retriever per vector,
    each min-max normalized over its top hits (calibrated per query). No script."""

    name = "linear_retriever"
    needs = "the `linear` retriever (Elasticsearch 8.18+)"
    needs_max_bm25 = False  # it normalizes BM25 itself

    def available(self, engine: Engine, index: str) -> bool:
        return engine.has_linear_retriever(index)

    def terms(self, ctx: QueryContext) -> list[tuple[str, JSON, float]]:
        """(name, retriever, weight) of each min-max normalized term with a weight above 0:
        ``bm25``, ``query``, ``popularity`` and the user terms, each a weight's name."""
        engine, w = ctx.engine, ctx.weights
        window = ctx.personal_k
        text = {"bool": {"must": [ctx.words], "filter": ctx.filters}}
        terms: list[tuple[str, JSON, float]] = [("bm25", {"standard": {"query": text}}, w.bm25)]
        if w.query > 0:
            terms.append(("query", engine.knn_retriever("embedding", ctx.vector, window,
                                                        filter_query=ctx.scope), w.query))
        if w.popularity > 0:
            terms.append(("popularity", {"standard": {"query": {"bool": {
                "filter": [ctx.matching], "should": [popularity_clause(1.0)]}}}},
                w.popularity))
        for term in ctx.user_terms:
            terms.append((term.name, engine.knn_retriever(term.field, term.vector, window,
                                                          filter_query=ctx.personal_scope),
                          term.weight))
        return terms

    sums_terms = True

    def term_searches(self, ctx: QueryContext, matches: int) -> list[tuple[str, JSON]]:
        """Each retriever of ``terms`` on its own, over the window (``matches`` unused: the
        ``linear`` retriever sees each term's window only)."""
        return [(name, {"size": ctx.personal_k, "retriever": retriever})
                for name, retriever, _ in self.terms(ctx)]

    def term_scores(self, name: str, scores: Sequence[float], ctx: QueryContext
                    ) -> list[float]:
        return min_max(scores)

    def request(self, ctx: QueryContext) -> JSON:
        retrievers = [{"retriever": retriever, "weight": weight, "normalizer": "minmax"}
                      for _, retriever, weight in self.terms(ctx)]
        if (seen_clause := ctx.seen_clause()) is not None:
            # A constant, not min-max normalized: the weight is the seen documents' share.
            retrievers.append({"retriever": {"standard": {"query": seen_clause}},
                               "weight": 1.0, "normalizer": "none"})
        return {
            "size": ctx.size, "from": ctx.offset,
            "retriever": {"linear": {"retrievers": retrievers,
                                     "rank_window_size": ctx.personal_k}},
        }


class KnnLinear(Strategy):
    """The words' clause (BM25 over the best score) with popularity, plus one weighted kNN
    clause per vector; the engine adds the clause scores. Any engine, no script."""

    name = "knn_linear"
    needs = "kNN search"

    def available(self, engine: Engine, index: str) -> bool:
        return True

    def knn_clauses(self, ctx: QueryContext) -> list[KnnClause]:
        """Each kNN clause with a weight above 0: the query vector over the scope, each user
        term over the personal scope."""
        clauses = [KnnClause("query", "embedding", ctx.vector, ctx.weights.query, ctx.scope)]
        clauses += [KnnClause(t.name, t.field, t.vector, t.weight, ctx.personal_scope)
                    for t in ctx.user_terms]
        return [c for c in clauses if c.weight > 0]

    def request(self, ctx: QueryContext) -> JSON:
        w = ctx.weights
        text = ctx.words_with_popularity(w.bm25 / ctx.max_bm25 if ctx.max_bm25 > 0 else w.bm25)
        body: JSON = {
            "size": ctx.size, "from": ctx.offset,
            "query": {"bool": {"should": [text], "filter": ctx.filters,
                               "minimum_should_match": 1}},
        }
        for clause in self.knn_clauses(ctx):
            clause.add_to(body, ctx, clause.weight)
        if (seen_clause := ctx.seen_clause()) is not None:
            body["query"]["bool"]["should"].append(seen_clause)
        return body

    sums_terms = True

    def term_searches(self, ctx: QueryContext, matches: int) -> list[tuple[str, JSON]]:
        """The terms ``request`` adds up: the words' BM25 and popularity over up to
        ``matches`` matches (any match may enter the blend's top), each kNN clause over its
        k."""
        searches = words_and_popularity(ctx, matches)
        return searches + [clause.alone(ctx) for clause in self.knn_clauses(ctx)]

    def term_scores(self, name: str, scores: Sequence[float], ctx: QueryContext
                    ) -> list[float]:
        """BM25 over the query's best score, as ``request`` weighs it; the rest as scored."""
        if name == "bm25" and ctx.max_bm25 > 0:
            return [v / ctx.max_bm25 for v in scores]
        return list(scores)


# In config.BLEND_STRATEGIES' order (the names the ranking file and settings use).
STRATEGIES: dict[str, Strategy] = {
    s.name: s for s in sorted((ScriptScore(), LinearRetriever(), KnnLinear()),
                              key=lambda s: BLEND_STRATEGIES.index(s.name))}


def available_strategies(engine: Engine, index: str) -> list[str]:
    """The strategies this engine can run (which the search layer prefers: plugin/search.py)."""
    return [name for name, strategy in STRATEGIES.items() if strategy.available(engine, index)]
