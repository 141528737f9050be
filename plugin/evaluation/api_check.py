"""A check of the product as a user meets it: a MovieLens deployment built through the real
pipeline with the configured (by default the shipped) settings, searched through the HTTP API
(the app gunicorn serves), on a split and query forms of its own, not the evaluation's.

Each sampled user's latest liked movies are held out (leave-last-out, where the evaluation
splits every user's history 80/10/10 in time); everything the user did before the first of
them is sent, as is every other user's whole history. Then `es-interest train`'s behaviour
training and the popularity flush, and each held-out movie is looked for by two forms the
evaluation never tunes on: all of its genres in one query, and one word of its title. The
measure is the same request with the user against without (`user_id` left out), on the
target's rank among the top 100.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from plugin.api import create_app
from plugin.api.auth import create_key
from plugin.config import LOCAL_ENGINE_URLS, load_settings
from plugin.evaluation import metrics
from plugin.evaluation.data import title_word
from plugin.indices import setup_indices
from plugin.movielens import POSITIVE, Rating, movie_documents, rating_event, ratings
from plugin.pipeline import behaviour, index_documents, ingest_events, popularity
from plugin.progress import progress
from plugin.services import Services

FORMS = ("genres", "title word")
# Re-finding: a movie the user liked before the held-out ones, by its title word.
REFIND = "title word, liked before"
BATCH = 1000


@dataclass(frozen=True)
class Probe:
    """One held-out liked movie of a user, looked for by one query form."""

    user_id: str
    movie_id: str
    form: str
    text: str


def query_text(movie: dict[str, Any], form: str) -> str | None:
    """The query of ``form`` for a movie, or None where it has none: ``genres``, every
    genre (lower case); ``title word``, ``data.title_word``."""
    if form == "genres":
        genres = movie["metadata"]["genres"]
        return " ".join(g.lower() for g in genres) if genres else None
    if form == "title word":
        return title_word(movie)
    raise ValueError(f"unknown query form {form!r}")


def split(history: dict[str, list[Rating]], movies: dict[str, dict[str, Any]], users: int,
          held_out: int, seed: int) -> tuple[list[dict[str, Any]], list[Probe]]:
    """The events to send and the probes. A user with at least ``held_out`` + 10 liked
    movies of the catalogue may be sampled (``users`` of them, seeded); a sampled user's last
    ``held_out`` likes are held out, and of their events only those before the first of them
    are sent; as many of the likes sent are searched for again (REFIND). Pure: no
    services."""
    def likes(rs: list[Rating]) -> list[Rating]:
        return [r for r in rs if r.rating >= POSITIVE and r.movie_id in movies]

    eligible = sorted(u for u, rs in history.items() if len(likes(rs)) >= held_out + 10)
    rng = random.Random(seed)
    sampled = set(rng.sample(eligible, min(users, len(eligible))))
    events: list[dict[str, Any]] = []
    probes: list[Probe] = []
    for user, rs in sorted(history.items()):
        in_time = sorted(rs, key=lambda r: (r.timestamp, r.movie_id))
        if user in sampled:
            held = likes(in_time)[-held_out:]
            cutoff = held[0].timestamp
            in_time = [r for r in in_time if r.timestamp < cutoff]
            probes += [Probe(user, r.movie_id, form, text) for r in held for form in FORMS
                       if (text := query_text(movies[r.movie_id], form))]
            before = likes(in_time)
            probes += [Probe(user, r.movie_id, REFIND, text)
                       for r in rng.sample(before, min(held_out, len(before)))
                       if (text := query_text(movies[r.movie_id], "title word"))]
        events += [e for r in in_time if r.movie_id in movies
                   and (e := rating_event(r)) is not None]
    events.sort(key=lambda e: (e["timestamp"], e["event_id"]))
    return events, probes


@contextmanager
def deployment(engine: str) -> Iterator[Services]:
    """A deployment of its own on ``engine`` (an engine of `make up`), removed afterwards."""
    settings = replace(load_settings(), engine_url=LOCAL_ENGINE_URLS[engine],
                       index_prefix=f"apicheck-{uuid.uuid4().hex[:6]}")
    services = Services(settings)
    setup_indices(services.engine, settings, services.embedder.dims)
    try:
        yield services
    finally:
        services.engine.delete_indices(f"{settings.index_prefix}-*")
        namespace = settings.redis_key("*")
        for key in services.redis.scan_iter(match=namespace, count=1000):
            services.redis.delete(key)


def _build(services: Services, docs: list[dict[str, Any]], events: list[dict[str, Any]]
           ) -> dict[str, int]:
    """Index, replay, train and flush popularity, through the pipeline the workers run."""
    with progress(total=len(docs), desc="indexing movies", unit="doc") as bar:
        for start in range(0, len(docs), BATCH):
            index_documents(services, docs[start:start + BATCH])
            bar.update(min(BATCH, len(docs) - start))
    services.engine.refresh(services.settings.docs_alias)
    applied = 0
    with progress(total=len(events), desc="events", unit="event") as bar:
        for start in range(0, len(events), BATCH):
            applied += len(ingest_events(services, events[start:start + BATCH]).done)
            bar.update(min(BATCH, len(events) - start))
    with progress(desc="behaviour vectors: training, re-folding users", unit="user") as bar:
        trained = behaviour.train(services, progress=bar.update)
    popularity.flush(services, refresh=True, max_docs=0)
    services.engine.refresh(services.settings.interests_alias)
    return {"events_applied": applied, "behaviour_documents": int(trained.get("documents", 0))}


def _ranks(services: Services, probes: Sequence[Probe]
           ) -> tuple[list[int | None], list[int | None], dict[str, int], set[str]]:
    """Each probe's target rank (1-based, None beyond 100) without and with its user, why
    the searches with a user were or were not personalized (counts), and the strategies
    that ran."""
    client = create_app(services.settings).test_client()
    key = create_key(services, "api-check", ("read",), "1000000/minute")
    headers = {"Authorization": f"ApiKey {key}"}
    plain: list[int | None] = []
    personal: list[int | None] = []
    reasons: dict[str, int] = defaultdict(int)
    strategies: set[str] = set()
    with progress(total=len(probes), desc="searches", unit="probe") as bar:
        for probe in probes:
            for user, out in ((None, plain), (probe.user_id, personal)):
                query = {"q": probe.text, "size": 100, **({"user_id": user} if user else {})}
                answer = client.get("/search", query_string=query, headers=headers)
                if answer.status_code != 200:
                    raise RuntimeError(f"/search answered {answer.status_code}: "
                                       f"{answer.get_data(as_text=True)[:300]}")
                body = answer.get_json()
                ids = [hit["id"] for hit in body["hits"]]
                out.append(ids.index(probe.movie_id) + 1 if probe.movie_id in ids else None)
                if user:
                    reasons["personalized" if body["personalized"]
                            else str(body["reason"])] += 1
                strategies.add(body["strategy"])
            bar.update()
    return plain, personal, dict(reasons), strategies


def summarize(plain: Sequence[int | None], personal: Sequence[int | None]) -> dict[str, Any]:
    """MRR@100 and NDCG@10 without and with the user, the relative gain, a 95% bootstrap
    interval of the difference and its one-sided tests (is the user's the better?)."""
    out: dict[str, Any] = {"probes": len(plain)}
    for name, fn in (("mrr@100", metrics.reciprocal_rank), ("ndcg@10", metrics.ndcg_at)):
        a = np.array([fn(r) for r in personal], dtype=np.float64)
        b = np.array([fn(r) for r in plain], dtype=np.float64)
        low, high = metrics.bootstrap_ci(a - b) if len(a) else (0.0, 0.0)
        out[name] = {"without": float(b.mean()) if len(b) else 0.0,
                     "with": float(a.mean()) if len(a) else 0.0,
                     "gain": float(a.mean() / b.mean() - 1) if len(b) and b.mean() else 0.0,
                     "difference_ci": [low, high],
                     **(metrics.paired_test(a, b) if len(a) else {})}
    return out


def run(engine: str = "elasticsearch", users: int = 150, held_out: int = 2, seed: int = 11,
        data_dir: Path | None = None, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole check on ``engine``; returns its figures (``report`` renders them)."""
    docs = movie_documents(data_dir)
    movies = {d["id"]: d for d in docs}
    history: dict[str, list[Rating]] = defaultdict(list)
    for r in ratings(data_dir):
        history[r.user_id].append(r)
    events, probes = split(history, movies, users, held_out, seed)
    echo(f"{len(docs)} movies, {len(events)} events, {len(probes)} probes of "
         f"{len({p.user_id for p in probes})} users")
    with deployment(engine) as services:
        built = _build(services, docs, events)
        plain, personal, reasons, strategies = _ranks(services, probes)
        engine_version = f"{services.engine.kind.value} {services.engine.version}"
    forms = {form: summarize([r for r, p in zip(plain, probes, strict=True) if p.form == form],
                             [r for r, p in zip(personal, probes, strict=True)
                              if p.form == form])
             for form in (*FORMS, REFIND)}
    return {"engine": engine_version, "strategy": ", ".join(sorted(strategies)), "users": users,
            "held_out": held_out, "seed": seed, "events": len(events), **built,
            "personalized": reasons, "forms": forms,
            "per_probe": [[p.user_id, p.movie_id, p.form, p.text, a, b]
                          for p, a, b in zip(probes, plain, personal, strict=True)]}


def report(result: dict[str, Any]) -> str:
    """The figures as markdown."""
    lines = [
        "# The product through its HTTP API: a user's search against the same search "
        "without them",
        "",
        f"Generated by `es-interest eval-api` ({result['engine']}, strategy "
        f"`{result['strategy']}`: the configured settings, by default the shipped ones). "
        "Data: MovieLens ml-latest-small (GroupLens; research licence in "
        "`data/movielens-small/README.txt`).",
        "",
        f"- {result['users']} users sampled (seed {result['seed']}) of those with at least "
        f"{result['held_out'] + 10} liked movies; each one's last {result['held_out']} likes "
        "are held out, and only what they did before the first of them is sent; every other "
        f"user's whole history is sent ({result['events']} events, {result['events_applied']} "
        "applied), through the workers' pipeline; then the behaviour training "
        f"({result['behaviour_documents']} movies with a behaviour vector) and the popularity "
        "flush.",
        "- Each held-out movie is searched for by two query forms the evaluation's "
        "discovery protocols do not use: **genres**, all its genres in one query; **title "
        "word**, its title's longest word (no stopwords, no year). Re-finding: as many "
        "movies the user liked "
        f"before are searched for by their title word (**{REFIND}**). The same GET /search "
        "with and without `user_id`, 100 hits. The searches with a user: "
        + ", ".join(f"{n} {why}" for why, n in sorted(result["personalized"].items(),
                                                      key=lambda kv: -kv[1])) + ".",
        "- `difference`: with the user less without, mean over probes, 95% bootstrap "
        "interval; `p`: one-sided paired bootstrap / Wilcoxon signed-rank (is the user's "
        "better?).",
        "",
        "| form | probes | MRR@100 without | with | gain | difference [95% CI] | p | "
        "NDCG@10 without | with | gain | p |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for form, f in result["forms"].items():
        mrr, ndcg = f["mrr@100"], f["ndcg@10"]
        lines.append(
            f"| {form} | {f['probes']} | {mrr['without']:.4f} | {mrr['with']:.4f} | "
            f"{mrr['gain']:+.1%} | {mrr.get('mean_diff', 0):+.4f} "
            f"[{mrr['difference_ci'][0]:+.4f}, {mrr['difference_ci'][1]:+.4f}] | "
            f"{mrr.get('p_bootstrap', 1):.3g} / {mrr.get('p_wilcoxon', 1):.3g} | "
            f"{ndcg['without']:.4f} | {ndcg['with']:.4f} | {ndcg['gain']:+.1%} | "
            f"{ndcg.get('p_bootstrap', 1):.3g} / {ndcg.get('p_wilcoxon', 1):.3g} |")
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "api_check.json").write_text(json.dumps(result) + "\n")
    path = out_dir / "api_check.md"
    path.write_text(report(result))
    return path
