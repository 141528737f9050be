"""Ingestion and the interest pipeline on the real engines, Redis, model and workers."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from plugin import dead_letter, pipeline
from plugin.config import Settings
from plugin.interest import UserInterest
from plugin.services import Services
from tests.conftest import ROOT, WorkerProcess, settings_env

pytestmark = pytest.mark.integration

TOPICS = ["football match", "jazz concert", "baking bread", "mountain hiking", "chess opening",
          "space telescope", "electric car", "vegetable garden", "stock market", "ocean sailing"]


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def corpus(services: Services) -> list[str]:
    """Forty small documents on ten topics, indexed once for this module."""
    docs = [{"id": f"doc-{t}-{i}", "title": f"{topic} story number {i}", "tags": [topic]}
            for t, topic in enumerate(TOPICS) for i in range(4)]
    report = pipeline.index_documents(services, docs, refresh=True)
    assert not report.errors
    return [d["id"] for d in docs]


def interest(services: Services, user_id: str) -> UserInterest | None:
    found = services.engine.get_versioned(services.settings.interests_alias, user_id)
    return None if found is None else UserInterest.from_source(found[0])


# -- documents -------------------------------------------------------------------------------


def test_document_batch_reports_each_bad_item_and_indexes_the_rest(services: Services) -> None:
    good = [{"id": uid("d"), "title": "A good document", "body": "about gardening"}
            for _ in range(3)]
    long_doc = {"id": uid("long"), "title": "long", "body": "word " * 3000}
    bad = [
        {"title": "no id here"},
        {"id": uid("empty"), "title": "  ", "body": ""},
        "not an object",
        {"id": uid("nan"), "title": "own vector", "embedding": [float("nan")] * 384},
        {"id": uid("short"), "title": "own vector", "embedding": [0.1] * 3},
    ]
    batch = [good[0], *bad[:3], good[1], long_doc, bad[3], bad[4], good[2]]
    report = pipeline.index_documents(services, batch, refresh=True)
    assert sorted(report.done) == sorted([d["id"] for d in good] + [long_doc["id"]])
    reasons = {e["position"]: e["error"] for e in report.errors}
    assert reasons[1] == "missing 'id'"
    assert reasons[2].startswith("empty text")
    assert reasons[3] == "a document must be a JSON object"
    assert "NaN" in reasons[6]
    assert reasons[7] == "'embedding' has 3 dimensions, the index 384"
    assert [n["id"] for n in report.notes if "truncated" in n.get("note", "")] == [long_doc["id"]]

    # Re-indexing the same id replaces the document.
    again = pipeline.index_documents(services, [{**good[0], "title": "A renamed document"}],
                                     refresh=True)
    assert again.done == [good[0]["id"]]
    doc = services.engine.client.get(index=services.settings.docs_alias, id=good[0]["id"])
    assert doc["_source"]["title"] == "A renamed document"


# -- events ----------------------------------------------------------------------------------


def test_one_bad_event_in_a_thousand_and_a_replay(services: Services, corpus: list[str]) -> None:
    rng = random.Random(7)
    users = [uid("u") for _ in range(50)]
    now = time.time()
    events = [{"event_id": uid("e"), "user_id": rng.choice(users), "doc_id": rng.choice(corpus),
               "type": rng.choice(["click", "like", "view", "dislike"]),
               "timestamp": now - rng.uniform(0, 86400 * 10)} for _ in range(1000)]
    events[500] = {**events[500], "type": "teleport"}
    report = pipeline.ingest_events(services, events)
    assert [e["position"] for e in report.errors] == [500]
    assert "unknown event type 'teleport'" in report.errors[0]["error"]
    assert len(report.done) == 999 and not report.duplicates

    def counted() -> int:
        return sum(sum(u.event_counts.values()) for u in
                   (interest(services, user) for user in users) if u is not None)

    assert counted() == 999
    replay = pipeline.ingest_events(services, events)
    assert len(replay.duplicates) == 999 and not replay.done
    assert counted() == 999


@pytest.mark.parametrize(("change", "reason"), [
    ({"user_id": None}, "missing 'user_id'"),
    ({"type": "teleport"}, "unknown event type"),
    ({"weight": "lots"}, "'weight' must be a number"),
    ({"timestamp": time.time() + 86400}, "in the future"),
])
def test_each_bad_event_gets_its_reason(services: Services, corpus: list[str],
                                        change: dict[str, object], reason: str) -> None:
    good = {"event_id": uid("e"), "user_id": uid("u"), "doc_id": corpus[0], "type": "like"}
    bad = {**good, "event_id": uid("e"), **change}
    report = pipeline.ingest_events(services, [bad, good])
    assert report.done == [good["event_id"]]
    assert len(report.errors) == 1 and reason in report.errors[0]["error"]


def test_an_event_waits_for_its_document(services: Services) -> None:
    user, doc_id = uid("u"), uid("later")
    event = {"event_id": uid("e"), "user_id": user, "doc_id": doc_id, "type": "like"}
    report = pipeline.ingest_events(services, [event])
    assert report.pending == [event["event_id"]] and not report.done
    assert interest(services, user) is None
    docs = pipeline.index_documents(services, [{"id": doc_id, "title": "arrives later"}])
    assert any("applied 1 events" in n.get("note", "") for n in docs.notes)
    state = interest(services, user)
    assert state is not None and state.event_counts == {"like": 1}
    # A resend after that is a duplicate.
    assert pipeline.ingest_events(services, [event]).duplicates == [event["event_id"]]


def test_events_keep_when_they_were_accepted_and_applied(services: Services,
                                                         corpus: list[str]) -> None:
    """The interest-update lag Kibana plots: API acceptance to the fold, pending or not."""
    user, later = uid("lag"), uid("later")
    accepted = int(time.time() * 1000) - 1500  # the API took them 1.5 s ago
    now_event = {"event_id": uid("e"), "user_id": user, "doc_id": corpus[0], "type": "like"}
    waiting = {"event_id": uid("e"), "user_id": user, "doc_id": later, "type": "like"}
    report = pipeline.ingest_events(services, [now_event, waiting], accepted_at_ms=accepted)
    assert report.done == [now_event["event_id"]] and report.pending == [waiting["event_id"]]
    pipeline.index_documents(services, [{"id": later, "title": "arrives later"}])
    pipeline.ingest_events(services, [waiting])  # a resend: the stamps stay the first ones
    index = services.settings.events_alias
    for event in (now_event, waiting):
        stored = services.engine.client.get(index=index, id=event["event_id"])["_source"]
        assert stored["status"] == "applied" and stored["accepted_at"] == accepted
        assert stored["update_lag_ms"] == stored["applied_at"] - accepted >= 1500
        assert stored["applied_at"] >= stored["received_at"]


def test_event_text_is_embedded_into_the_same_sums(services: Services) -> None:
    user = uid("u")
    event = {"event_id": uid("e"), "user_id": user, "type": "query",
             "text": "space telescope images"}
    assert pipeline.ingest_events(services, [event]).done == [event["event_id"]]
    state = interest(services, user)
    assert state is not None
    expected = services.embedder.encode_one("space telescope images")
    np.testing.assert_allclose(state.long.vector_sum / np.linalg.norm(state.long.vector_sum),
                               expected, atol=1e-5)


def test_a_batch_redelivered_after_a_crash_is_applied_once(services: Services,
                                                           corpus: list[str]) -> None:
    """A worker died after folding events but before storing them (acks_late redelivers)."""
    from plugin.pipeline.doc_vectors import fetch_doc_vectors
    from plugin.pipeline.users import fold_into_users

    user = uid("u")
    events = [{"event_id": uid("e"), "user_id": user, "doc_id": corpus[i], "type": "like",
               "timestamp": time.time() - i} for i in range(5)]
    # The crashed run folded the first three, then died before its write to the events index.
    crashed = [{**e, "weight": 2.0, "timestamp": round(e["timestamp"] * 1000)}
               for e in events[:3]]
    fold_into_users(services, crashed, fetch_doc_vectors(services, corpus[:3]))
    report = pipeline.ingest_events(services, events)
    assert sorted(report.done) == sorted(e["event_id"] for e in events)
    state = interest(services, user)
    assert state is not None and state.event_counts == {"like": 5}
    again = pipeline.ingest_events(services, events)
    assert sorted(again.duplicates) == sorted(e["event_id"] for e in events)
    state = interest(services, user)
    assert state is not None and state.event_counts == {"like": 5}


def test_rebuild_equals_the_incremental_path(services: Services, corpus: list[str]) -> None:
    rng = random.Random(11)
    user = uid("u")
    base = time.time() - 40 * 86400
    events = [{"event_id": uid("e"), "user_id": user, "doc_id": rng.choice(corpus),
               "type": rng.choice(["click", "like", "dislike", "purchase", "skip"]),
               "timestamp": base + rng.uniform(0, 40 * 86400)} for _ in range(120)]
    events.append({"event_id": uid("e"), "user_id": user, "type": "comment",
                   "doc_id": corpus[3], "text": "loved the final chapter",
                   "timestamp": base + 86400})
    rng.shuffle(events)  # arrival order is not time order: late events land where they belong
    for start in range(0, len(events), 17):
        pipeline.ingest_events(services, events[start:start + 17])
    incremental = interest(services, user)
    assert incremental is not None

    result = pipeline.rebuild_user(services, user)
    assert result["events"] == len(events)
    rebuilt = interest(services, user)
    assert rebuilt is not None
    for a, b in ((incremental.long, rebuilt.long), (incremental.short, rebuilt.short)):
        assert np.max(np.abs(a.vector_sum - b.vector_sum)) <= 1e-5
        assert a.weight == pytest.approx(b.weight, abs=1e-5)
        assert a.ref_time == b.ref_time
    assert incremental.event_counts == rebuilt.event_counts


def test_a_batch_rebuild_by_a_worker_equals_each_users_incremental_path(
    services: Services, corpus: list[str], worker, celery_client  # type: ignore[no-untyped-def]
) -> None:
    rng = random.Random(12)
    users = [uid("batch") for _ in range(25)]
    base = time.time() - 20 * 86400
    events = [{"event_id": uid("e"), "user_id": rng.choice(users), "doc_id": rng.choice(corpus),
               "type": rng.choice(["click", "like", "dislike", "purchase"]),
               "timestamp": base + rng.uniform(0, 20 * 86400)} for _ in range(300)]
    for start in range(0, len(events), 50):
        assert not pipeline.ingest_events(services, events[start:start + 50]).errors
    incremental = {u: interest(services, u) for u in users}

    unknown = uid("nobody")  # no events, no document: nothing to rebuild, nothing written
    result = celery_client.send_task("es_interest.rebuild_users",
                                     args=[[*users, unknown]]).get(timeout=300)
    assert result["rebuilt"] == len(users) and result["deferred"] == []
    assert result["events"] == len(events)
    assert interest(services, unknown) is None
    for user in users:
        before, after = incremental[user], interest(services, user)
        assert before is not None and after is not None
        for a, b in ((before.long, after.long), (before.short, after.short)):
            assert np.max(np.abs(a.vector_sum - b.vector_sum)) <= 1e-5
            assert a.ref_time == b.ref_time
        assert before.event_counts == after.event_counts


# -- workers ---------------------------------------------------------------------------------


def test_two_worker_processes_lose_no_update(services: Services, settings: Settings,
                                             corpus: list[str], worker, celery_client) -> None:  # type: ignore[no-untyped-def]
    second = WorkerProcess(settings, f"second-{uuid.uuid4().hex[:4]}")
    try:
        second.wait_ready()
        user = uid("hot")
        now = time.time()
        batches = [[{"event_id": uid("e"), "user_id": user, "doc_id": corpus[(b + i) % 40],
                     "type": "click", "timestamp": now - b - i / 10} for i in range(10)]
                   for b in range(30)]
        results = [celery_client.send_task("es_interest.ingest_events", args=[batch])
                   for batch in batches]
        reports = [r.get(timeout=300) for r in results]
        assert sum(len(r["done"]) for r in reports) == 300
        assert len({r["worker_pid"] for r in reports}) == 2  # both processes took batches
        state = interest(services, user)
        assert state is not None and state.event_counts == {"click": 300}
        before = state.long.vector_sum
        pipeline.rebuild_user(services, user)
        after = interest(services, user)
        assert after is not None and np.max(np.abs(after.long.vector_sum - before)) <= 1e-5
    finally:
        second.stop()


def _refused_user_writes(services: Services) -> int:
    stats = services.engine.client.indices.stats(index=services.settings.interests_alias,
                                                 metric="indexing")
    return int(stats["_all"]["total"]["indexing"]["index_failed"])


def test_a_process_whose_cached_user_is_stale_reads_it_afresh_before_writing(
        settings: Settings, services: Services, corpus: list[str]) -> None:
    """Two processes (two caches) fold one user in turn. Each learns from the other's version
    hint in Redis that its own copy is stale and reads the user again, so the engine refuses
    no write; without the hint the write is refused and retried. Either way nothing is lost."""
    from plugin.caches import forget_users, stale_users

    processes = [Services(settings), Services(settings)]
    user = uid("turns")
    now = time.time()
    turns = [[{"event_id": uid("e"), "user_id": user, "doc_id": corpus[t], "type": "click",
               "timestamp": now - t}] for t in range(6)]
    refused = _refused_user_writes(services)
    for turn, events in enumerate(turns[:4]):
        assert pipeline.ingest_events(processes[turn % 2], events).done
    assert _refused_user_writes(services) == refused
    cached = processes[0].user_states.get_many([user])[user]  # the other one wrote last
    assert stale_users(services.redis, services.settings, {user: (cached[1], cached[2])}) == {user}

    # No hint: the stale copy is tried, and refused.
    forget_users(services.redis, services.settings, [user])
    assert stale_users(services.redis, services.settings, {user: (cached[1], cached[2])}) == set()
    for turn, events in enumerate(turns[4:], start=4):
        assert pipeline.ingest_events(processes[turn % 2], events).done
    assert _refused_user_writes(services) > refused
    state = interest(services, user)
    assert state is not None and state.event_counts == {"click": 6}


def test_a_worker_logs_its_tasks_but_not_what_users_sent(corpus: list[str], worker,
                                                         celery_client) -> None:  # type: ignore[no-untyped-def]
    user, event_id = uid("secret-user"), uid("secret-event")
    events = [{"event_id": event_id, "user_id": user, "doc_id": corpus[0], "type": "like"},
              {"event_id": uid("secret-bad"), "user_id": user, "doc_id": corpus[0],
               "type": "not-a-type"}]
    result = celery_client.send_task("es_interest.ingest_events", args=[events])
    report = result.get(timeout=120)
    assert report["done"] == [event_id] and len(report["errors"]) == 1
    deadline = time.monotonic() + 10
    while f"[{result.id}] succeeded" not in (text := worker.log_path.read_text()):
        assert time.monotonic() < deadline, "the worker did not log the task at info level"
        time.sleep(0.1)
    assert f"[{result.id}] succeeded" in text and "withheld" in text
    assert user not in text and event_id not in text
    assert "secret-bad" not in text and "not-a-type" not in text


def test_a_task_that_keeps_failing_goes_to_the_dead_letter_list(worker, celery_client) -> None:  # type: ignore[no-untyped-def]
    dead_letter.purge(celery_client)
    result = celery_client.send_task("es_interest.ingest_events", args=[12345])
    with pytest.raises(TypeError):
        result.get(timeout=60)
    entries = wait_for_dead_letters(celery_client)
    assert len(entries) == 1
    assert entries[0]["task"] == "es_interest.ingest_events"
    assert entries[0]["args"] == [12345] and entries[0]["error"].startswith("TypeError")
    assert len(dead_letter.replay(celery_client)) == 1
    # The replayed task fails again and lands back here.
    assert len(wait_for_dead_letters(celery_client)) == 1
    assert dead_letter.purge(celery_client) == 1


def wait_for_dead_letters(celery_client, timeout_s: float = 60.0) -> list[dict]:  # type: ignore[no-untyped-def]
    # The result is stored before on_failure runs, so the entry can trail it a little.
    deadline = time.monotonic() + timeout_s
    while not (entries := dead_letter.entries(celery_client)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return entries


def test_cli_ingests_a_jsonl_file_through_the_worker(settings: Settings, corpus: list[str],
                                                     worker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    user = uid("cli")
    lines = [json.dumps({"event_id": uid("e"), "user_id": user, "doc_id": corpus[i],
                         "type": "like"}) for i in range(5)]
    lines.insert(2, "{not json")
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = subprocess.run([sys.executable, "-m", "plugin.cli", "ingest", "events", str(path),
                          "--batch-size", "2", "--report", str(tmp_path / "r.json")],
                         cwd=ROOT, env=settings_env(settings), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "done: 5, duplicates: 0, pending: 0, errors: 1" in out.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["error_list"][0]["error"].startswith("line 3: not JSON")


# -- mappings --------------------------------------------------------------------------------


def test_setup_is_idempotent_refuses_incompatible_changes_and_migrates(
    services: Services, settings: Settings, tmp_path: Path
) -> None:
    from plugin.indices import IncompatibleMapping, setup_indices

    engine, dims = services.engine, services.embedder.dims
    mine = replace(settings, index_prefix=f"{settings.index_prefix}-mig")
    assert all("(created)" in line for line in setup_indices(engine, mine, dims))
    assert all("(up to date)" in line for line in setup_indices(engine, mine, dims))
    report = pipeline.index_documents(Services(mine), [
        {"id": str(i), "title": f"document {i}"} for i in range(30)], refresh=True)
    assert len(report.done) == 30

    v2 = json.loads((settings.mappings_dir / "documents.v1.json").read_text())
    v2["version"] = 2
    v2["mappings"]["properties"]["doc_id"] = {"type": "text"}  # a type change: not in place
    v2["mappings"]["properties"]["language"] = {"type": "keyword"}
    for kind in ("events", "interests"):
        for path in settings.mappings_dir.glob(f"{kind}.v*.json"):
            (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "documents.v2.json").write_text(json.dumps(v2))
    upgraded = replace(mine, mappings_dir=tmp_path)
    with pytest.raises(IncompatibleMapping, match=r"doc_id: keyword -> text.*--reindex"):
        setup_indices(engine, upgraded, dims)
    lines = setup_indices(engine, upgraded, dims, reindex=True)
    assert "migrated 30 documents" in lines[0]
    targets = list(engine.client.indices.get_alias(name=mine.docs_alias))
    assert len(targets) == 1 and targets[0].startswith(f"{mine.docs_alias}-v2-")
    assert engine.client.count(index=mine.docs_alias)["count"] == 30
    engine.client.indices.delete(index=f"{mine.index_prefix}-*")


def test_interest_documents_from_mapping_v1_upgrade_in_place_and_migrate(
    services: Services, settings: Settings, tmp_path: Path
) -> None:
    """Users written under interests v1 (unit vectors stored) stay readable after the in-place
    upgrade, and ``--reindex`` copies them without the fields v2 dropped."""
    from plugin.caches import forget_users
    from plugin.indices import setup_indices
    from plugin.interest import Contribution
    from plugin.search import user_vectors

    engine, dims = services.engine, services.embedder.dims
    mine = replace(settings, index_prefix=f"{settings.index_prefix}-v1users")
    for path in settings.mappings_dir.glob("*.v1.json"):
        (tmp_path / path.name).write_text(path.read_text())
    setup_indices(engine, replace(mine, mappings_dir=tmp_path), dims)
    embedding = services.embedder.encode_one("space opera").tolist()
    user = UserInterest.empty("old-user", dims).fold(
        Contribution(1.0e9, 1.0, embedding, "like"), 3.0e7, 6.0e5)
    old_source = {k: v for k, v in user.to_source(1.0e9).items() if k != "vectors"}
    old_source["interest_long"] = old_source["interest_short"] = embedding  # as v1 wrote them
    engine.client.index(index=mine.interests_alias, id="old-user", body=old_source,
                        refresh=True)

    lines = setup_indices(engine, mine, dims)
    assert "added fields: vectors" in lines[2]
    mine_services = Services(mine)
    vectors = user_vectors(mine_services, "old-user")
    assert vectors.long == pytest.approx(embedding, abs=1e-6)

    lines = setup_indices(engine, mine, dims, reindex=True)
    assert "migrated 1 documents" in lines[2]
    copied = engine.client.get(index=mine.interests_alias, id="old-user")["_source"]
    assert "interest_long" not in copied and "interest_short" not in copied
    assert UserInterest.from_source(copied).long.weight == pytest.approx(1.0)
    forget_users(mine_services.redis, mine_services.settings, ["old-user"])  # read it from the copy
    assert user_vectors(mine_services, "old-user").long == pytest.approx(embedding, abs=1e-6)
    engine.client.indices.delete(index=f"{mine.index_prefix}-*")
