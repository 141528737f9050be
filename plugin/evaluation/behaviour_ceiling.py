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

    python -m plugin.evaluation.behaviour_ceiling [--users N] [--out FILE.md]
"""

from __future__ import annotations

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

from plugin.config import load_settings
from plugin.evaluation import data, metrics
from plugin.events import positive_sequences_of
from plugin.pipeline.behaviour import frequent_documents, learn_vectors, users_per_document
from plugin.progress import progress

FloatArray = npt.NDArray[np.float64]
# A user's scores for the candidate documents, given in order.
Scorer = Callable[[str, list[str]], FloatArray]

BLEND_WEIGHTS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
EASE_PENALTY = 200.0  # the best of 50, 200 and 500 on these queries
EASE_MIN_USERS = 3  # as the shipped models' documents


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


def _rank(scores: FloatArray, target: int) -> int | None:
    rank = 1 + int((scores > scores[target]).sum())
    return rank if rank <= 100 else None


def ceiling_table(users: int | None = None) -> list[dict[str, Any]]:
    """Each arm's MRR@100 and NDCG@10 on the validation discovery queries, and its
    difference from popularity alone (95% bootstrap interval, one-sided p)."""
    split, movies = data.split(users=users)
    rating_events = [e for e in split.train if "weight" in e]
    sequences = positive_sequences_of(rating_events)
    rated: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event in rating_events:
        rated[event["user_id"]][event["doc_id"]] += float(event["weight"])
    likes = users_per_document(sequences)
    matches = _matches(movies)
    settings = load_settings()
    scorers: dict[str, Scorer] = {}
    for model in ("ppmi_svd", "als"):
        vectors = learn_vectors(replace(settings, behaviour_model=model), sequences)
        scorers[f"{model}, one user vector (shipped form)"] = folded_vector_scorer(
            vectors, rated)
    scorers["EASE, full rank (no one-vector form)"] = ease_scorer(sequences)

    queries = [q for q in split.validation if q.protocol in data.DISCOVERY]
    ranks: dict[tuple[str, str, float], list[int | None]] = defaultdict(list)
    for query in progress(queries, desc="ceiling queries", unit="query"):
        candidates = sorted(d for d in matches(query.text)
                            if d not in rated[query.user_id] or d == query.movie_id)
        target = candidates.index(query.movie_id)
        popular = _scaled(np.array([math.log1p(likes.get(d, 0)) for d in candidates]))
        ranks[(query.protocol, "popularity", 0.0)].append(_rank(popular, target))
        for name, scorer in scorers.items():
            behaviour = _scaled(scorer(query.user_id, candidates))
            for weight in BLEND_WEIGHTS:
                ranks[(query.protocol, name, weight)].append(
                    _rank(popular + weight * behaviour, target))

    rows: list[dict[str, Any]] = []
    for protocol in data.DISCOVERY:
        baseline = metrics.per_query(ranks[(protocol, "popularity", 0.0)])
        count = len(baseline["mrr"])
        rows.append({"protocol": protocol, "arm": "popularity", "weight": None,
                     "queries": count,
                     **{m: float(baseline[m].mean()) for m in ("mrr", "ndcg@10")}})
        for name in scorers:
            by_weight = {w: metrics.per_query(ranks[(protocol, name, w)])
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


def markdown(rows: list[dict[str, Any]]) -> str:
    """The report: what was measured, then one row per protocol and arm."""
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
    return header + "\n".join(lines) + "\n"


@click.command()
@click.option("--users", type=int, default=None, help="a sample of users (default: all 610)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write the table to this markdown file")
def main(users: int | None, out: Path | None) -> None:
    """How much a better behaviour model could add over popularity on discovery queries
    (validation period; offline, no engine): the shipped one-vector form against full-rank
    EASE, each at its best blend weight."""
    table = markdown(ceiling_table(users))
    click.echo(table)
    if out is not None:
        out.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
