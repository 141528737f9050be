"""Issue 22: the partition count is fixed at setup, stored with the interests index, and
changed only once the old partitions' queues are drained."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from dataclasses import replace

import pytest

from plugin.celery_app import make_celery, send_events, waiting_event_batches
from plugin.config import Settings
from plugin.partitions import partition_of, stored_count
from plugin.services import Services
from tests.conftest import ROOT, settings_env

pytestmark = pytest.mark.integration


def test_the_partition_count_is_stored_checked_and_changed_after_a_drain(
        settings: Settings, engine_name: str) -> None:
    if engine_name != "elasticsearch":
        pytest.skip("a setup and broker matter, independent of the engine: elasticsearch")
    own = replace(settings, index_prefix=f"{settings.index_prefix}-part-{uuid.uuid4().hex[:6]}",
                  redis_url="redis://127.0.0.1:6379/15")
    services = Services(own)
    services.redis.flushdb()

    def cli(*args: str, partitions: int = 4) -> subprocess.CompletedProcess[str]:
        env = {**settings_env(own), "ES_INTEREST_EVENT_PARTITIONS": str(partitions)}
        return subprocess.run([sys.executable, "-m", "plugin.cli", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

    try:
        made = cli("setup")
        assert made.returncode == 0, made.stderr
        assert "events: 4 partitions" in made.stdout
        assert stored_count(services.engine, own) == 4
        # A worker or setup configured otherwise is refused, with what to do.
        for args in (("setup",), ("worker", "--partitions", "0-1")):
            refused = cli(*args, partitions=8)
            assert refused.returncode != 0
            assert "set up with 4 event partitions" in refused.stderr
            assert "--repartition" in refused.stderr
        # A batch waits in an old partition: no change yet.
        celery = make_celery(own)
        user = next(f"u{i}" for i in range(100) if partition_of(f"u{i}", 4) == 1)
        send_events(celery, [{"event_id": "e1", "user_id": user, "type": "like",
                              "doc_id": "d"}], 10)
        assert waiting_event_batches(celery, services.redis, 4) == 1
        prefix = celery.conf.broker_transport_options["global_keyprefix"]
        message = json.loads(services.redis.lindex(f"{prefix}events.1", 0))
        # Its readable copy of the arguments (monitors, task logs) names the count only.
        assert message["headers"]["argsrepr"] == "[1 items]"
        waiting = cli("setup", "--repartition", partitions=8)
        assert waiting.returncode != 0 and "1 batches still wait" in waiting.stderr
        assert stored_count(services.engine, own) == 4
        # Drained: the new count is stored, and the old one is refused from then on.
        services.redis.delete(f"{prefix}events.1")
        assert waiting_event_batches(celery, services.redis, 4) == 0
        changed = cli("setup", "--repartition", partitions=8)
        assert changed.returncode == 0, changed.stderr
        assert "events: 8 partitions" in changed.stdout
        assert stored_count(services.engine, own) == 8
        assert cli("setup").returncode != 0
    finally:
        services.redis.flushdb()
        services.engine.client.indices.delete(index=f"{own.index_prefix}-*")


def test_batches_folded_together_report_each_batch_on_its_own(services: Services) -> None:
    """An owner folds the batches that waited for a partition as one; each task still gets
    its own report: its positions, its ids (one sent in two batches: done in the first, a
    duplicate in the second), and every event counted once."""
    from plugin import pipeline

    run = uuid.uuid4().hex[:6]
    doc = {"id": f"gc-{run}", "title": "Snow chains and winter tires", "tags": ["cars"]}
    assert not pipeline.index_documents(services, [doc], refresh=True).errors
    user = f"grouped-{run}"

    def event(n: int) -> dict[str, object]:
        return {"event_id": f"gc-{n}-{run}", "user_id": user, "doc_id": doc["id"],
                "type": "like", "timestamp": 1_700_000_000 + n}

    first = [event(1), event(2)]
    second = [{"user_id": user, "type": "like"}, event(2), event(3)]  # no event_id: rejected
    reports = pipeline.ingest_event_batches(services, [first, second])
    assert sorted(reports[0].done) == [f"gc-1-{run}", f"gc-2-{run}"]
    assert reports[1].done == [f"gc-3-{run}"] and reports[1].duplicates == [f"gc-2-{run}"]
    assert [e["position"] for e in reports[1].errors] == [0] and not reports[0].errors
    found = services.engine.get_versioned(services.settings.interests_alias, user)
    assert found is not None and found[0]["event_count"] == 3


def test_health_names_the_queues_no_worker_consumes(settings: Settings,
                                                    engine_name: str) -> None:
    """An event partition without an owner holds its users' feedback back: /health says which
    queues lack a consumer, and is healthy once every queue has one."""
    if engine_name != "elasticsearch":
        pytest.skip("workers and the broker matter, independent of the engine: elasticsearch")
    from plugin.api import create_app
    from tests.conftest import WorkerProcess

    own = replace(settings, index_prefix=f"{settings.index_prefix}-hq-{uuid.uuid4().hex[:6]}",
                  redis_url="redis://127.0.0.1:6379/15", event_partitions=4)
    services = Services(own)
    services.redis.flushdb()
    client = create_app(own).test_client()
    workers = [WorkerProcess(own, f"hq-a-{uuid.uuid4().hex[:4]}", args=["--partitions", "0-1"])]
    try:
        workers[0].wait_ready()
        health = client.get("/health")
        assert health.status_code == 503 and not health.json["workers"]["ok"]
        assert health.json["workers"]["count"] == 1
        assert health.json["workers"]["queues_without_consumer"] == [
            "documents", "celery", "events.2", "events.3"]
        workers.append(WorkerProcess(own, f"hq-b-{uuid.uuid4().hex[:4]}",
                                     args=["--partitions", "2-3", "-Q", "documents,events,celery"]))
        workers[1].wait_ready()
        health = client.get("/health")
        assert health.json["workers"] == {"ok": True, "count": 2, "queues_without_consumer": []}
    finally:
        for worker in workers:
            worker.stop()
        services.redis.flushdb()
