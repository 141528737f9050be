"""MovieLens ratings and tags as events, split per user in time, and the evaluation queries."""

from __future__ import annotations

import csv
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugin.movielens import POSITIVE, SHIPPED, Rating, movie_documents, rating_event, ratings


def tag_events(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Each tag a user applied: a comment with its text, on the movie it was applied to."""
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with open(folder / "tags.csv", newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.DictReader(fh)):
            by_user[row["userId"]].append({
                "event_id": f"t-{n}", "user_id": row["userId"], "doc_id": row["movieId"],
                "type": "comment", "text": row["tag"], "timestamp": int(row["timestamp"])})
    return by_user


# Query protocols, reported separately. Discovery: the target is a movie new to the user, asked
# for by one of its genres or tags ("term") or two together ("words": longer, more specific).
# Re-finding ("refind"): the target is a movie the user liked before, asked for by one term
# or, for about half of them, by a word of its title (a known-item search, where the movie
# is near the top without the user).
DISCOVERY = ("term", "words")
PROTOCOLS = (*DISCOVERY, "refind")


@dataclass
class Query:
    user_id: str
    movie_id: str
    text: str
    timestamp: int
    protocol: str = "term"


@dataclass
class Split:
    train: list[dict[str, Any]]  # events, time order
    validation: list[Query]
    test: list[Query]
    static_events: dict[str, list[dict[str, Any]]]  # per user: training events (for profiles)
    # Per user: every event, all periods, time order (a profile at a query's time folds
    # those before it, as the service would have).
    history: dict[str, list[dict[str, Any]]]


def _query_for(movie: dict[str, Any], rng: random.Random, protocol: str) -> str | None:
    """One (``term``) or two (``words``) genres or tags of the movie that do not name it."""
    title_words = set(re.findall(r"\w+", movie["title"].lower()))
    options = sorted({t.lower() for t in movie["tags"]
                      if not set(re.findall(r"\w+", t.lower())) & title_words})
    wanted = 1 if protocol == "term" else 2
    if len(options) < wanted:
        return None
    return " ".join(rng.sample(options, wanted))


# Words of a title that say nothing of the movie.
TITLE_STOPWORDS = frozenset({
    "the", "a", "an", "and", "of", "in", "on", "to", "for", "with", "from", "at", "by", "is",
    "it", "its", "la", "le", "les", "el", "de", "der", "die", "das", "ii", "iii", "iv", "part",
})


def title_word(movie: dict[str, Any]) -> str | None:
    """The title's longest word that is not a stopword, a number or the year (the first such
    word of that length), lower case; None where there is none."""
    title = re.sub(r"\(\d{4}(?:-\d{4})?\)\s*$", "", movie["title"])
    words = [w for w in re.findall(r"[^\W\d_]+", title.lower())
             if len(w) >= 3 and w not in TITLE_STOPWORDS]
    return max(words, key=len) if words else None


def split(folder: Path | None = None, users: int | None = None, seed: int = 7,
          train_share: float = 0.8, validation_share: float = 0.1,
          max_queries_per_user: int = 5) -> tuple[Split, list[dict[str, Any]]]:
    """Per user, in time: the first 80% of ratings train, the next 10% validate, the last 10%
    test; held-out positives become queries. Tags before the user's cut join the training."""
    folder = folder or SHIPPED
    movies = {m["id"]: m for m in movie_documents(folder)}
    by_user: dict[str, list[Rating]] = defaultdict(list)
    for r in ratings(folder):
        by_user[r.user_id].append(r)
    user_ids = sorted(by_user, key=int)
    rng = random.Random(seed)
    if users is not None and users < len(user_ids):
        user_ids = sorted(rng.sample(user_ids, users), key=int)
    tags = tag_events(folder)
    train: list[dict[str, Any]] = []
    validation: list[Query] = []
    test: list[Query] = []
    static: dict[str, list[dict[str, Any]]] = {}
    history: dict[str, list[dict[str, Any]]] = {}
    for user in user_ids:
        ratings_in_time = sorted(by_user[user], key=lambda r: (r.timestamp, r.movie_id))
        cut_train = int(len(ratings_in_time) * train_share)
        cut_val = int(len(ratings_in_time) * (train_share + validation_share))
        if cut_train == 0 or cut_val >= len(ratings_in_time):
            continue
        boundary = ratings_in_time[cut_train].timestamp
        events = [e for r in ratings_in_time[:cut_train] if (e := rating_event(r)) is not None]
        events += [t for t in tags.get(user, []) if t["timestamp"] < boundary]
        events.sort(key=lambda e: e["timestamp"])
        train += events
        static[user] = events
        every = [e for r in ratings_in_time if (e := rating_event(r)) is not None]
        history[user] = sorted(every + tags.get(user, []),
                               key=lambda e: (e["timestamp"], e["event_id"]))
        liked_before = [r.movie_id for r in ratings_in_time[:cut_train]
                        if r.rating >= POSITIVE and r.movie_id in movies]
        for part, target in ((ratings_in_time[cut_train:cut_val], validation),
                             (ratings_in_time[cut_val:], test)):
            for protocol in DISCOVERY:
                picked = 0
                for r in part:
                    if (r.rating >= POSITIVE and r.movie_id in movies
                            and picked < max_queries_per_user):
                        text = _query_for(movies[r.movie_id], rng, protocol)
                        if text:
                            target.append(Query(user, r.movie_id, text, r.timestamp, protocol))
                            picked += 1
            target += _refind_queries(user, part, liked_before, movies, rng,
                                      max_queries_per_user)
    train.sort(key=lambda e: e["timestamp"])
    return Split(train, validation, test, static, history), list(movies.values())


def _refind_queries(user: str, part: list[Rating], liked_before: list[str],
                    movies: dict[str, dict[str, Any]], rng: random.Random,
                    limit: int) -> list[Query]:
    """At the times of the part's first ratings, a movie the user liked in training, asked
    for by one of its terms or, where the movie's id is odd (about half of them, whatever
    the user's count), by its title word instead (the term is drawn all the same, so the
    other protocols' draws do not depend on it)."""
    out: list[Query] = []
    options = list(liked_before)
    rng.shuffle(options)
    for r in part:
        while options and len(out) < limit:
            movie_id = options.pop()
            text = _query_for(movies[movie_id], rng, "term")
            if text and int(movie_id) % 2 == 1:
                text = title_word(movies[movie_id]) or text
            if text:
                out.append(Query(user, movie_id, text, r.timestamp, "refind"))
                break
    return out
