"""How far a better behaviour model could lift discovery: an offline stand-in, no engine.

``make eval`` measures the product; this asks what the product's form leaves on the table.
Each discovery query of the evaluation's validation period ranks the movies that share a word
with it in their genres or tags (the query's matches, as BM25 would take them), less what the
user interacted with in training, by training popularity alone and by popularity plus one
behaviour score: the shipped form (a user's vector is the weighted sum of the vectors of the
documents they rated, as the workers fold it, scored by cosine) for PPMI-SVD and ALS, and
EASE at full rank (the item-item model that is strongest on MovieLens in the literature; it
scores each document from every document the user liked and has no one-vector form, so the
product cannot serve it as a kNN search). Each blend's weight is the best on the same
queries, so every figure is that model's ceiling here, not a held-out result.

A second table asks the same of the tail targets (movies fewer than ``TAIL_USERS`` users
touched in training, which have no behaviour vector): ALS's arm plus the user's content
profile's cosine on the documents without a behaviour vector only, at each content weight,
overall and on the tail. A third asks what keeping a profile current can be worth: ALS's arm
with the user's vectors folded from their events before each query (dynamic, as the service
holds them) or from their training events only (static, frozen when training ended), each
alone and with a short-term vector of a few forms, every arm at its best weights on the same
queries.

    python -m plugin.evaluation.behaviour_ceiling [--users N] [--out FILE.md]
"""

from __future__ import annotations

import itertools
import math
import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import numpy as np
import numpy.typing as npt

from plugin.config import Settings, load_settings
from plugin.documents import parse_document
from plugin.embedding import get_embedder
from plugin.evaluation import data, metrics
from plugin.evaluation.run import TAIL_USERS
from plugin.events import positive_sequences_of
from plugin.interest import interest_vector, replay
from plugin.pipeline.behaviour import frequent_documents, learn_vectors, users_per_document
from plugin.progress import progress

FloatArray = npt.NDArray[np.float64]
# A user's scores for the candidate documents, given in order.
Scorer = Callable[[str, list[str]], FloatArray]

BLEND_WEIGHTS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
EASE_PENALTY = 200.0  # the best of 50, 200 and 500 on these queries
EASE_MIN_USERS = 3  # as the shipped models' documents
CONTENT_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)
SHORT_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)
LONG_WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)
LAST_LIKED = 3
COLD_ARM = "als + content on documents without a behaviour vector"


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _matches(movies: list[dict[str, Any]]) -> Callable[[str], set[str]]:
    """The movies with a query word among their genres' and tags' words."""
    by_word: dict[str, set[str]] = defaultdict(set)
    for movie in movies:
        for tag in movie["tags"]:
            for word in _words(tag):
                by_word[word].add(movie["id"])
    return lambda text: set().union(*(by_word.get(w, set()) for w in _words(text)))


def _scaled(scores: FloatArray) -> FloatArray:
    top = float(np.abs(scores).max()) if scores.size else 0.0
    return scores / top if top > 0 else scores


def folded_vector_scorer(vectors: Mapping[str, FloatArray],
                         rated: Mapping[str, Mapping[str, float]]) -> Scorer:
    """The shipped form: the user's vector is the weighted sum of their documents' vectors;
    a candidate scores its cosine to it (0 without a vector)."""
    def score(user: str, candidates: list[str]) -> FloatArray:
        parts = [w * vectors[d] for d, w in rated[user].items() if d in vectors]
        if not parts:
            return np.zeros(len(candidates))
        total = np.sum(parts, axis=0)
        total = total / (np.linalg.norm(total) or 1.0)
        return np.array([float(vectors[d] @ total) if d in vectors else 0.0
                         for d in candidates])
    return score


def ease_scorer(sequences: Mapping[str, list[str]], penalty: float = EASE_PENALTY,
                min_users: int = EASE_MIN_USERS) -> Scorer:
    """EASE (Steck, 2019): the item-item weights B = I - P / diag(P), P = (X'X + penalty I)^-1
    over the users' liked documents X; a user's scores are their liked row of X times B."""
    items = frequent_documents(sequences, min_users)
    column = {d: i for i, d in enumerate(items)}
    liked = np.zeros((len(sequences), len(items)))
    row_of = {}
    for n, (user, docs) in enumerate(sequences.items()):
        row_of[user] = n
        liked[n, [column[d] for d in docs if d in column]] = 1.0
    inverse = np.linalg.inv(liked.T @ liked + penalty * np.eye(len(items)))
    weights = -inverse / np.diag(inverse)
    np.fill_diagonal(weights, 0.0)

    def score(user: str, candidates: list[str]) -> FloatArray:
        if user not in row_of:
            return np.zeros(len(candidates))
        scores = liked[row_of[user]] @ weights
        return np.array([scores[column[d]] if d in column else 0.0 for d in candidates])
    return score


def cold_content_scorer(embeddings: Mapping[str, FloatArray],
                        rated: Mapping[str, Mapping[str, float]],
                        behaviour_vectors: Mapping[str, FloatArray]) -> Scorer:
    """The user's content profile (the folded form over their rated documents' text vectors)
    scored by cosine on the documents without a behaviour vector; 0 on the others."""
    content = folded_vector_scorer(embeddings, rated)

    def score(user: str, candidates: list[str]) -> FloatArray:
        cold = np.array([d not in behaviour_vectors for d in candidates], dtype=np.float64)
        return content(user, candidates) * cold
    return score


def _embeddings(settings: Settings, movies: list[dict[str, Any]]) -> dict[str, FloatArray]:
    """Each movie's text vector, as the workers embed it (unit length)."""
    texts = [parse_document(m).embedded_text(settings.embed_fields,
                                              settings.embed_title_cleanup) for m in movies]
    embedder = get_embedder(settings.model, settings.model_device, settings.embed_batch_size,
                            settings.torch_threads, settings.model_backend)
    vectors = np.asarray(embedder.encode(texts), dtype=np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return {m["id"]: v for m, v in zip(movies, vectors, strict=True)}


def _rank(scores: FloatArray, target: int) -> int | None:
    rank = 1 + int((scores > scores[target]).sum())
    return rank if rank <= 100 else None


def ceiling_table(users: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """``models``: each arm's MRR@100 and NDCG@10 on the validation discovery queries, and its
    difference from popularity alone (95% bootstrap interval, one-sided p); ``tail``: ALS's
    arm with each content weight on documents without a behaviour vector, overall and on
    the tail targets, against the same arm without it; ``dynamic``: ``dynamic_table``."""
    split, movies = data.split(users=users)
    rating_events = [e for e in split.train if "weight" in e]
    sequences = positive_sequences_of(rating_events)
    rated: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event in rating_events:
        rated[event["user_id"]][event["doc_id"]] += float(event["weight"])
    likes = users_per_document(sequences)
    touched: dict[str, set[str]] = defaultdict(set)
    for event in split.train:
        touched[event["doc_id"]].add(event["user_id"])
    matches = _matches(movies)
    settings = load_settings()
    scorers: dict[str, Scorer] = {}
    als_vectors: Mapping[str, FloatArray] = {}
    for model in ("ppmi_svd", "als"):
        vectors = learn_vectors(replace(settings, behaviour_model=model), sequences)
        scorers[f"{model}, one user vector (shipped form)"] = folded_vector_scorer(
            vectors, rated)
        if model == "als":
            als_vectors = vectors
    scorers["EASE, full rank (no one-vector form)"] = ease_scorer(sequences)
    cold = cold_content_scorer(_embeddings(settings, movies), rated, als_vectors)
    als = scorers["als, one user vector (shipped form)"]

    queries = [q for q in split.validation if q.protocol in data.DISCOVERY]
    ranks: dict[tuple[str, str, float, float], list[int | None]] = defaultdict(list)
    tail_of: dict[str, list[bool]] = defaultdict(list)
    for query in progress(queries, desc="ceiling queries", unit="query"):
        candidates = sorted(d for d in matches(query.text)
                            if d not in rated[query.user_id] or d == query.movie_id)
        target = candidates.index(query.movie_id)
        tail_of[query.protocol].append(len(touched[query.movie_id]) < TAIL_USERS)
        popular = _scaled(np.array([math.log1p(likes.get(d, 0)) for d in candidates]))
        ranks[(query.protocol, "popularity", 0.0, 0.0)].append(_rank(popular, target))
        for name, scorer in scorers.items():
            behaviour = _scaled(scorer(query.user_id, candidates))
            for weight in BLEND_WEIGHTS:
                ranks[(query.protocol, name, weight, 0.0)].append(
                    _rank(popular + weight * behaviour, target))
        behaviour = _scaled(als(query.user_id, candidates))
        content = cold(query.user_id, candidates)
        for weight, content_weight in itertools.product(BLEND_WEIGHTS, CONTENT_WEIGHTS[1:]):
            ranks[(query.protocol, COLD_ARM, weight, content_weight)].append(_rank(
                popular + weight * behaviour + content_weight * content, target))

    rows: list[dict[str, Any]] = []
    for protocol in data.DISCOVERY:
        baseline = metrics.per_query(ranks[(protocol, "popularity", 0.0, 0.0)])
        count = len(baseline["mrr"])
        rows.append({"protocol": protocol, "arm": "popularity", "weight": None,
                     "queries": count,
                     **{m: float(baseline[m].mean()) for m in ("mrr", "ndcg@10")}})
        for name in scorers:
            by_weight = {w: metrics.per_query(ranks[(protocol, name, w, 0.0)])
                         for w in BLEND_WEIGHTS}
            weight = max(BLEND_WEIGHTS, key=lambda w: float(by_weight[w]["mrr"].mean()))
            arm = by_weight[weight]
            diff = arm["mrr"] - baseline["mrr"]
            rows.append({"protocol": protocol, "arm": name, "weight": weight,
                         "queries": count, "mrr": float(arm["mrr"].mean()),
                         "ndcg@10": float(arm["ndcg@10"].mean()),
                         "mrr_gain": float(diff.mean() / baseline["mrr"].mean()),
                         "mrr_diff_ci": metrics.bootstrap_ci(diff),
                         "p": metrics.paired_test(arm["mrr"], baseline["mrr"])["p_bootstrap"]})
    return {"models": rows, "tail": _tail_rows(ranks, tail_of),
            "dynamic": dynamic_table(split, likes, matches, als_vectors, settings)}


def _tail_rows(ranks: Mapping[tuple[str, str, float, float], list[int | None]],
               tail_of: Mapping[str, list[bool]]) -> list[dict[str, Any]]:
    """Both discovery protocols together: per content weight, ALS's arm at the behaviour
    weight best overall (MRR) with it, against the same arm at content weight 0."""
    tail = np.array([t for p in data.DISCOVERY for t in tail_of[p]], dtype=bool)

    def arm(name: str, weight: float, content_weight: float) -> dict[str, FloatArray]:
        return metrics.per_query([r for p in data.DISCOVERY
                                  for r in ranks[(p, name, weight, content_weight)]])

    def best(content_weight: float) -> tuple[float, dict[str, FloatArray]]:
        name = "als, one user vector (shipped form)" if content_weight == 0 else COLD_ARM
        by_weight = {w: arm(name, w, content_weight) for w in BLEND_WEIGHTS}
        weight = max(BLEND_WEIGHTS, key=lambda w: float(by_weight[w]["mrr"].mean()))
        return weight, by_weight[weight]

    _, without = best(0.0)
    rows = []
    for content_weight in CONTENT_WEIGHTS:
        weight, scored = best(content_weight)
        on_tail = scored["ndcg@10"][tail]
        rows.append({
            "content_weight": content_weight, "weight": weight, "queries": len(tail),
            "tail_queries": int(tail.sum()), "mrr": float(scored["mrr"].mean()),
            "ndcg@10": float(scored["ndcg@10"].mean()),
            "ndcg_diff": float((scored["ndcg@10"] - without["ndcg@10"]).mean()),
            "tail_ndcg@10": float(on_tail.mean()), "tail_mrr": float(scored["mrr"][tail].mean()),
            "tail_ndcg_diff_ci": metrics.bootstrap_ci(on_tail - without["ndcg@10"][tail]),
            "tail_p": metrics.paired_test(on_tail, without["ndcg@10"][tail])})
    return rows


def decayed_vector(events: list[dict[str, Any]], vectors: Mapping[str, FloatArray],
                   half_life_s: float | None, last: int | None = None) -> FloatArray | None:
    """The user's interest vector over their rated documents' behaviour vectors, folded as
    the workers fold it (``plugin.interest.replay``, ``interest_vector``) at ``half_life_s``;
    with ``last``, the mean of the last ``last`` liked documents' vectors instead. None where
    nothing counts."""
    rated = [e for e in events if "weight" in e and e["doc_id"] in vectors]
    if last is None:
        if not rated or half_life_s is None:
            return None
        dims = len(vectors[rated[0]["doc_id"]])
        state = replay(((float(e["timestamp"]), float(e["weight"]), vectors[e["doc_id"]])
                        for e in rated), dims, half_life_s)
        vector = interest_vector(state)
        return None if vector is None else vector.astype(np.float64)
    liked = [vectors[e["doc_id"]] for e in rated if float(e["weight"]) > 0][-last:]
    if not liked:
        return None
    total = np.sum(liked, axis=0)
    norm = float(np.linalg.norm(total))
    return total / norm if norm > 0 else None


def dynamic_table(split: data.Split, likes: Mapping[str, int],
                  matches: Callable[[str], set[str]], vectors: Mapping[str, FloatArray],
                  settings: Settings) -> list[dict[str, Any]]:
    """Per short-term form, dynamic against static: each arm's NDCG@10 at its best long and
    short weights, the paired difference with its interval and p-values (``likes``: each
    document's training users; ``matches``: a query's matching documents)."""
    long_s, short_s = settings.half_life_long_s, settings.half_life_short_s
    forms: dict[str, tuple[float | None, int | None]] = {
        "none": (None, None), f"half-life {short_s:g} s (shipped)": (short_s, None),
        "half-life 1 d": (86400.0, None), f"last {LAST_LIKED} liked": (None, LAST_LIKED)}
    ranks: dict[tuple[str, str, float, float], list[int | None]] = defaultdict(list)
    none = np.zeros(len(next(iter(vectors.values()))))
    queries = [q for q in split.validation if q.protocol in data.DISCOVERY]
    for query in progress(queries, desc="dynamic queries", unit="query"):
        before = [e for e in split.history[query.user_id] if e["timestamp"] < query.timestamp]
        static = split.static_events.get(query.user_id, [])
        known = {e["doc_id"] for e in before if "weight" in e}
        candidates = sorted(d for d in matches(query.text)
                            if d not in known or d == query.movie_id)
        target = candidates.index(query.movie_id)
        popular = _scaled(np.array([math.log1p(likes.get(d, 0)) for d in candidates]))
        matrix = np.array([vectors.get(d, none) for d in candidates])
        for profile, events in (("static", static), ("dynamic", before)):
            long = decayed_vector(events, vectors, long_s)
            long_scores = _scaled(matrix @ long) if long is not None else np.zeros_like(popular)
            for form, (half_life, last) in forms.items():
                short = (decayed_vector(events, vectors, half_life, last)
                         if form != "none" else None)
                short_scores = (_scaled(matrix @ short) if short is not None
                                else np.zeros_like(popular))
                for wl, ws in itertools.product(LONG_WEIGHTS, SHORT_WEIGHTS
                                                if form != "none" else (0.0,)):
                    ranks[(profile, form, wl, ws)].append(_rank(
                        popular + wl * long_scores + ws * short_scores, target))
    scored = {key: metrics.per_query(r)["ndcg@10"] for key, r in ranks.items()}
    rows = []
    for form in forms:
        best = {profile: max((k for k in scored if k[:2] == (profile, form)),
                             key=lambda k: float(scored[k].mean()))
                for profile in ("static", "dynamic")}
        current, frozen = scored[best["dynamic"]], scored[best["static"]]
        rows.append({"form": form, "queries": len(current), "long_days": long_s / 86400.0,
                     "static": float(frozen.mean()), "dynamic": float(current.mean()),
                     "static_weights": best["static"][2:], "dynamic_weights": best["dynamic"][2:],
                     "diff_ci": metrics.bootstrap_ci(current - frozen),
                     "p": metrics.paired_test(current, frozen)})
    return rows


HEADER = """# How far a better behaviour model could lift discovery (offline, no engine)

Generated by `python -m plugin.evaluation.behaviour_ceiling` (MovieLens ml-latest-small,
GroupLens; research licence in `data/movielens-small/README.txt`). The evaluation's split and
discovery protocols, on the validation period (up to five queries a user and protocol, where
`make eval` takes one: {queries}); each ranks the movies sharing a word with it in
their genres or tags, less those the user rated in training, by training popularity, alone and
plus one behaviour score: PPMI-SVD and ALS as the product serves them (the user's vector is
the weighted sum of their rated documents' vectors, scored by cosine), and EASE at full rank
(item-item weights from every liked document; no one-vector form, so no kNN search can serve
it). Each blend's weight is the best of {weights} on these same queries: each row is that
model's ceiling in this stand-in, not a held-out figure. Difference: MRR@100 less
popularity's, 95% bootstrap interval; p: one-sided paired bootstrap.

"""


TAIL_HEADER = """
## Tail targets: content on documents without a behaviour vector

The same queries, both protocols together ({tail} of {queries} with a tail target: fewer than
{tail_users} users touched it in training, so it has no behaviour vector and no user reaches it
through that term). ALS's arm plus the user's content profile (the weighted sum of their rated
movies' text vectors) scored by cosine on the movies without a behaviour vector only, at each
content weight, with the behaviour weight best overall for it. Difference: tail targets'
NDCG@10 less the same arm's at content weight 0, 95% bootstrap interval; p: one-sided paired
bootstrap / Wilcoxon.

"""


DYNAMIC_HEADER = """
## Dynamic against static profiles

The same queries ({queries}), each ranking the movies that share a word with it less those the
user rated before the query (the same candidates for both profiles). Popularity plus ALS's
arm: the user's long-term vector (half-life {long_days:g} d, the ranking file's) and a
short-term one, folded from the user's rated events before the query (dynamic: current, as
the service holds it) or from their training events only (static: frozen when training
ended, its short-term vector at training's last event). Each arm at its best long and short
weights (long {long_weights}; short {short_weights}) on these same queries. Difference:
dynamic less static NDCG@10, 95% bootstrap interval; p: one-sided paired bootstrap /
Wilcoxon.

"""


def _dynamic_lines(rows: list[dict[str, Any]]) -> list[str]:
    header = DYNAMIC_HEADER.format(
        queries=rows[0]["queries"], long_days=rows[0]["long_days"],
        long_weights=", ".join(f"{w:g}" for w in LONG_WEIGHTS),
        short_weights=", ".join(f"{w:g}" for w in SHORT_WEIGHTS))
    columns = ("short-term vector", "static NDCG@10", "weights (long, short)",
               "dynamic NDCG@10", "weights (long, short)", "difference [95% CI]", "p")
    lines = [header.rstrip("\n") + "\n", "| " + " | ".join(columns) + " |",
             "|" + " --- |" * len(columns)]
    for row in rows:
        low, high = row["diff_ci"]
        lines.append("| " + " | ".join([
            row["form"], f"{row['static']:.4f}",
            ", ".join(f"{w:g}" for w in row["static_weights"]), f"{row['dynamic']:.4f}",
            ", ".join(f"{w:g}" for w in row["dynamic_weights"]),
            f"{row['dynamic'] - row['static']:+.4f} [{low:+.4f}, {high:+.4f}]",
            f"{row['p']['p_bootstrap']:.3g} / {row['p']['p_wilcoxon']:.3g}"]) + " |")
    return lines


def markdown(tables: Mapping[str, list[dict[str, Any]]]) -> str:
    """The report: what was measured, then one row per protocol and arm, then the tail's
    and the dynamic profiles' tables (where they were measured)."""
    rows = tables["models"]
    counts = {row["protocol"]: row["queries"] for row in rows}
    header = HEADER.format(queries=", ".join(f"{p} {n}" for p, n in counts.items()),
                           weights=", ".join(f"{w:g}" for w in BLEND_WEIGHTS))
    columns = ("protocol", "arm", "blend weight (best)", "MRR@100", "NDCG@10",
               "MRR gain over popularity", "difference [95% CI]", "p")
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        cells = [row["protocol"], row["arm"], "-", f"{row['mrr']:.4f}",
                 f"{row['ndcg@10']:.4f}", "-", "-", "-"]
        if row["weight"] is not None:
            low, high = row["mrr_diff_ci"]
            cells[2] = f"{row['weight']:g}"
            cells[5:] = [f"{100 * row['mrr_gain']:+.1f}%", f"[{low:+.4f}, {high:+.4f}]",
                         f"{row['p']:.3g}"]
        lines.append("| " + " | ".join(cells) + " |")
    tail = tables.get("tail") or []
    if tail:
        lines.append(TAIL_HEADER.format(tail=tail[0]["tail_queries"],
                                        queries=tail[0]["queries"],
                                        tail_users=TAIL_USERS).rstrip("\n") + "\n")
        tail_columns = ("content weight", "behaviour weight (best)", "MRR@100", "NDCG@10",
                        "NDCG@10 difference", "tail NDCG@10", "tail MRR@100",
                        "tail difference [95% CI]", "p")
        lines += ["| " + " | ".join(tail_columns) + " |",
                  "|" + " --- |" * len(tail_columns)]
        for row in tail:
            low, high = row["tail_ndcg_diff_ci"]
            lines.append("| " + " | ".join([
                f"{row['content_weight']:g}", f"{row['weight']:g}", f"{row['mrr']:.4f}",
                f"{row['ndcg@10']:.4f}", f"{row['ndcg_diff']:+.4f}",
                f"{row['tail_ndcg@10']:.4f}", f"{row['tail_mrr']:.4f}",
                f"[{low:+.4f}, {high:+.4f}]",
                f"{row['tail_p']['p_bootstrap']:.3g} / {row['tail_p']['p_wilcoxon']:.3g}"])
                + " |")
    if tables.get("dynamic"):
        lines += _dynamic_lines(tables["dynamic"])
    return header + "\n".join(lines) + "\n"


@click.command()
@click.option("--users", type=int, default=None, help="a sample of users (default: all 610)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write the table to this markdown file")
def main(users: int | None, out: Path | None) -> None:
    """How much a better behaviour model could add over popularity on discovery queries
    (validation period; offline, no engine): the shipped one-vector form against full-rank
    EASE, each at its best blend weight; on tail targets, ALS's arm with a content term on
    the documents without a behaviour vector; and dynamic against static profiles."""
    table = markdown(ceiling_table(users))
    click.echo(table)
    if out is not None:
        out.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
