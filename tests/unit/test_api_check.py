"""The API check's pure parts: its query forms, its leave-last-out split, its figures."""

from __future__ import annotations

import numpy as np
import pytest

from plugin.evaluation.api_check import FORMS, REFIND, query_text, split, summarize
from plugin.movielens import Rating


def movie(movie_id: str, title: str, genres: list[str]) -> dict[str, object]:
    return {"id": movie_id, "title": title, "tags": genres, "metadata": {"genres": genres}}


def test_query_forms() -> None:
    toy = movie("1", "Toy Story (1995)", ["Adventure", "Animation", "Children"])
    assert query_text(toy, "genres") == "adventure animation children"
    assert query_text(toy, "title word") == "story"
    # No year, no stopword, no digits; none left: no probe.
    assert query_text(movie("2", "The Lord of the Rings (1978)", []), "title word") == "rings"
    assert query_text(movie("3", "Up (2009)", []), "title word") is None
    assert query_text(movie("3", "Up (2009)", []), "genres") is None
    with pytest.raises(ValueError, match="unknown query form"):
        query_text(toy, "plot")


def test_split_holds_out_the_last_likes_and_sends_only_what_came_before() -> None:
    movies = {str(i): movie(str(i), f"Movie number{i} (2000)", ["Drama"]) for i in range(40)}
    history = {
        # 14 likes, then a middling rating and a dislike after the cut.
        "heavy": [Rating("heavy", str(i), 5.0, 100 + i) for i in range(14)]
                 + [Rating("heavy", "30", 1.0, 200), Rating("heavy", "31", 3.0, 50)],
        "light": [Rating("light", str(i), 4.0, 10 + i) for i in range(5)],
    }
    events, probes = split(history, movies, users=5, held_out=2, seed=1)
    # Only "heavy" has 12 likes; its last two (12 and 13) are held out, with what followed.
    held = {p.movie_id for p in probes if p.form in FORMS}
    assert held == {"12", "13"}
    sent = {(e["user_id"], e["doc_id"]) for e in events}
    assert ("heavy", "12") not in sent and ("heavy", "13") not in sent
    assert ("heavy", "30") not in sent  # after the cut
    assert ("heavy", "11") in sent
    assert {("light", str(i)) for i in range(5)} <= sent  # not sampled: all of it
    assert ("heavy", "31") not in sent  # a 3 is neither a like nor a dislike
    assert [e["timestamp"] for e in events] == sorted(e["timestamp"] for e in events)
    # Each held-out like in both forms; re-finding probes are likes that were sent.
    assert sorted(p.form for p in probes if p.movie_id == "12") == sorted(FORMS)
    refind = [p for p in probes if p.form == REFIND]
    assert len(refind) == 2 and all(("heavy", p.movie_id) in sent for p in refind)


def test_split_is_seeded() -> None:
    movies = {str(i): movie(str(i), f"Film word{i} (1990)", ["Comedy"]) for i in range(30)}
    history = {f"u{u}": [Rating(f"u{u}", str(i), 4.5, i) for i in range(15)] for u in range(6)}
    first = split(history, movies, users=3, held_out=1, seed=3)
    assert first == split(history, movies, users=3, held_out=1, seed=3)
    assert len({p.user_id for p in first[1]}) == 3


def test_summarize_compares_with_and_without_the_user() -> None:
    plain = [2, None, 1, 10]
    personal = [1, 5, 1, 3]
    out = summarize(plain, personal)
    mrr = out["mrr@100"]
    assert out["probes"] == 4
    assert mrr["without"] == pytest.approx(np.mean([0.5, 0.0, 1.0, 0.1]))
    assert mrr["with"] == pytest.approx(np.mean([1.0, 0.2, 1.0, 1 / 3]))
    assert mrr["gain"] == pytest.approx(mrr["with"] / mrr["without"] - 1)
    low, high = mrr["difference_ci"]
    assert low <= mrr["mean_diff"] <= high and mrr["mean_diff"] > 0
