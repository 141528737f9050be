"""Issue 19: a real three-node Elasticsearch cluster (`make up-cluster`, one replica per shard)
loses a node (SIGKILL) while events are ingested and searches run: no event is lost or applied
twice, every search answers (200, or 503 with Retry-After), and the node rejoins."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import replace

import pytest

from plugin import dead_letter
from plugin.api import create_app
from plugin.celery_app import make_celery
from plugin.config import load_settings
from plugin.indices import setup_indices
from plugin.pipeline import rebuild_user
from plugin.services import Services
from tests.conftest import CLUSTER_URL, ROOT, RUN_ID, WorkerProcess

pytestmark = pytest.mark.integration

STACK = str(ROOT / "devstack" / "stack.sh")
VICTIM = 2  # the client talks to node 0


def _health(svc: Services) -> dict[str, object]:
    return dict(svc.engine.client.cluster.health())


def test_a_cluster_losing_a_node_loses_nothing_and_keeps_answering(stack: None) -> None:
    settings = replace(load_settings({}), engine_url=CLUSTER_URL,
                       redis_url="redis://127.0.0.1:6379/8",
                       index_prefix=f"test-{RUN_ID}-nodeloss",
                       behaviour_first_training_events=10**9, api_auth="disabled")
    svc = Services(settings)
    svc.redis.flushdb()
    setup_indices(svc.engine, settings, svc.embedder.dims)
    svc.engine.client.cluster.health(wait_for_status="green", timeout="120s")
    replicas = svc.engine.client.indices.get_settings(index=settings.events_alias)
    assert all(s["settings"]["index"]["number_of_replicas"] == "1" for s in replicas.values())
    celery = make_celery(settings)
    worker = WorkerProcess(settings, f"nodeloss-{uuid.uuid4().hex[:4]}", concurrency=2)
    statuses: Counter[int] = Counter()
    missing_retry_after = []
    stop = threading.Event()

    def search_all_along() -> None:
        client = create_app(settings).test_client()
        while not stop.is_set():
            answer = client.get("/search?q=winter+tires&user_id=nodeloss-0&cache=false")
            statuses[answer.status_code] += 1
            if answer.status_code == 503 and answer.headers.get("Retry-After") != "1":
                missing_retry_after.append(answer.json)
            time.sleep(0.05)

    searcher = threading.Thread(target=search_all_along, daemon=True)
    killed = False
    try:
        worker.wait_ready()
        docs = [{"id": f"nl-{i}", "title": f"Winter tires and snow chains, part {i}",
                 "tags": ["cars"]} for i in range(20)]
        report = celery.send_task("es_interest.index_documents", args=[docs],
                                  kwargs={"refresh": True}).get(timeout=120)
        assert len(report["done"]) == len(docs)
        users = [f"nodeloss-{u}" for u in range(50)]
        events = [{"event_id": f"nl-{i}", "user_id": users[i % len(users)],
                   "doc_id": docs[i % len(docs)]["id"], "type": "like",
                   "timestamp": time.time() - 10_000 + i} for i in range(3000)]
        searcher.start()
        results = []
        for n, start in enumerate(range(0, len(events), 100)):
            results.append(celery.send_task("es_interest.ingest_events",
                                            args=[events[start:start + 100]]))
            if n == 10:
                subprocess.run([STACK, "kill-node", str(VICTIM)], check=True)
                killed = True
            time.sleep(0.2)
        for result in results:
            result.get(timeout=900)
        subprocess.run([STACK, "start-node", str(VICTIM)], check=True)
        killed = False
        deadline = time.monotonic() + 300
        while not (_health(svc)["number_of_nodes"] == 3 and _health(svc)["status"] == "green"):
            assert time.monotonic() < deadline, "the node did not rejoin"
            time.sleep(2)
        stop.set()
        searcher.join(timeout=60)
        assert dead_letter.entries(celery) == []
    finally:
        stop.set()
        worker.stop()
        if killed:
            subprocess.run([STACK, "start-node", str(VICTIM)], check=False)
    alias = settings.events_alias
    svc.engine.client.indices.refresh(index=alias)
    assert svc.engine.client.count(index=alias)["count"] == len(events)
    found = svc.engine.mget_versioned(settings.interests_alias, users)
    assert sum(src["event_count"] for src, _, _ in found.values()) == len(events)
    before = found[users[0]][0]["state"]["long"]["weight"]
    rebuild_user(svc, users[0])
    after = svc.engine.get_versioned(settings.interests_alias, users[0])
    assert after is not None and after[0]["state"]["long"]["weight"] == pytest.approx(before)
    # Searches answered all along: results, or a 503 that says when to come back.
    assert set(statuses) <= {200, 503} and statuses[200] > 0, statuses
    assert missing_retry_after == []
    svc.engine.client.indices.delete(index=f"{settings.index_prefix}-*")
    svc.redis.flushdb()
