"""MovieLens (ml-latest-small) as documents and events. Licence: data/movielens-small/README.txt."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugin.config import REPO_ROOT

SHIPPED = REPO_ROOT / "data" / "movielens-small"
# Ratings at or above / at or below these are likes / dislikes (``rating_event``).
POSITIVE, NEGATIVE = 4.0, 2.0


@dataclass(frozen=True)
class Rating:
    user_id: str
    movie_id: str
    rating: float
    timestamp: int


def movie_documents(data_dir: Path | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Movies as documents: title, genres and the tags users applied (as tags)."""
    folder = data_dir or SHIPPED
    user_tags: dict[str, list[str]] = defaultdict(list)
    with open(folder / "tags.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            tag = row["tag"].strip()
            if tag and tag.lower() not in (t.lower() for t in user_tags[row["movieId"]]):
                user_tags[row["movieId"]].append(tag)
    docs = []
    with open(folder / "movies.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            genres = [g for g in row["genres"].split("|") if g and g != "(no genres listed)"]
            docs.append({
                "id": row["movieId"],
                "title": row["title"],
                "tags": genres + user_tags.get(row["movieId"], [])[:10],
                "metadata": {"genres": genres},
            })
            if limit is not None and len(docs) >= limit:
                break
    return docs


def ratings(data_dir: Path | None = None) -> Iterator[Rating]:
    folder = data_dir or SHIPPED
    with open(folder / "ratings.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            yield Rating(row["userId"], row["movieId"], float(row["rating"]), int(row["timestamp"]))


def rating_event(r: Rating) -> dict[str, Any] | None:
    """4 and above: a like weighted by how much (4 -> 1 ... 5 -> 2); 2 and below: a dislike
    (2 -> -1 ... 0.5 -> -2.5); in between says little and is left out."""
    if r.rating >= POSITIVE:
        weight, kind = r.rating - 3.0, "like"
    elif r.rating <= NEGATIVE:
        weight, kind = r.rating - 3.0, "dislike"
    else:
        return None
    return {"event_id": f"r-{r.user_id}-{r.movie_id}", "user_id": r.user_id,
            "doc_id": r.movie_id, "type": kind, "weight": weight, "timestamp": r.timestamp}
