"""Issue 19: deployments that share one Redis never touch each other's work or data, and a
worker survives a Redis restart while it holds a scheduled message. Real workers, a real Redis
(shared, or a private one to restart) and the real engine."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from plugin.api import create_app
from plugin.celery_app import make_celery
from plugin.config import Settings
from plugin.deployment import DeploymentConflict, claim
from plugin.indices import setup_indices
from plugin.services import Services
from tests.conftest import WorkerProcess
from tests.faults import PrivateRedis

pytestmark = pytest.mark.integration

SHARED_REDIS = "redis://127.0.0.1:6379/10"


def _count(svc: Services, alias: str) -> int:
    svc.engine.client.indices.refresh(index=alias)
    return int(svc.engine.client.count(index=alias)["count"])


def _docs(tag: str, run: str) -> list[dict[str, object]]:
    return [{"id": f"{tag}-{i}-{run}", "title": title, "tags": [tag]}
            for i, title in enumerate(["Snow chains for winter roads",
                                       "Winter tires and their tread", "Gearbox repair"])]


def _likes(user: str, docs: list[dict[str, object]], run: str) -> list[dict[str, object]]:
    return [{"event_id": f"{user}-{d['id']}", "user_id": user, "doc_id": d["id"],
             "type": "like", "timestamp": time.time() - 60} for d in docs]


def test_two_deployments_on_one_redis_keep_their_work_and_data(settings: Settings,
                                                               engine_name: str) -> None:
    """Both directions: each deployment's documents and events wait for its own worker, and a
    user of one deployment is unknown (and stays cached as such) only in the other."""
    if engine_name != "elasticsearch":
        pytest.skip("a Redis namespace matter, independent of the engine: checked on "
                    "elasticsearch")
    run = uuid.uuid4().hex[:6]
    a = replace(settings, redis_url=SHARED_REDIS, index_prefix=f"{settings.index_prefix}-a",
                api_auth="disabled")
    b = replace(a, index_prefix=f"{settings.index_prefix}-b")
    svc_a, svc_b = Services(a), Services(b)
    svc_a.redis.flushdb()
    for svc in (svc_a, svc_b):
        setup_indices(svc.engine, svc.settings, svc.embedder.dims)
    worker_b = WorkerProcess(b, f"iso-b-{run}")
    worker_a = None
    try:
        worker_b.wait_ready()
        docs_a, docs_b = _docs("a", run), _docs("b", run)
        pending_a = svc_a.celery.send_task("es_interest.index_documents", args=[docs_a],
                                           kwargs={"refresh": True})
        events_a = svc_a.celery.send_task("es_interest.ingest_events",
                                          args=[_likes(f"only-a-{run}", docs_a, run)],
                                          kwargs={"refresh": True})
        svc_b.celery.send_task("es_interest.index_documents", args=[docs_b],
                               kwargs={"refresh": True}).get(timeout=120)
        svc_b.celery.send_task("es_interest.ingest_events",
                               args=[_likes(f"only-b-{run}", docs_b, run)],
                               kwargs={"refresh": True}).get(timeout=120)
        time.sleep(2)
        # B's worker took B's work only; A's waits in A's queues.
        assert not pending_a.ready() and not events_a.ready()
        assert _count(svc_a, a.docs_alias) == 0 and _count(svc_a, a.events_alias) == 0
        assert _count(svc_b, b.docs_alias) == len(docs_b)
        assert _count(svc_b, b.events_alias) == len(docs_b)

        # A user of B is nobody to A: A's lookup (cached as empty) does not shadow B's user.
        client_a, client_b = create_app(a).test_client(), create_app(b).test_client()
        seen_by_a = client_a.get(f"/search?q=winter&user_id=only-b-{run}").json
        assert seen_by_a["personalized"] is False
        assert client_b.get(f"/search?q=winter&user_id=only-b-{run}").json["personalized"]

        # The other direction: A's worker starts, takes A's waiting work, and nothing of B's.
        worker_a = WorkerProcess(a, f"iso-a-{run}")
        worker_a.wait_ready()
        assert len(pending_a.get(timeout=120)["done"]) == len(docs_a)
        assert len(events_a.get(timeout=120)["done"]) == len(docs_a)
        assert _count(svc_a, a.docs_alias) == len(docs_a)
        assert _count(svc_b, b.docs_alias) == len(docs_b)
        assert client_a.get(f"/search?q=winter&user_id=only-a-{run}").json["personalized"]
        assert not client_b.get(f"/search?q=winter&user_id=only-a-{run}").json["personalized"]
    finally:
        worker_b.stop()
        if worker_a is not None:
            worker_a.stop()
        for svc in (svc_a, svc_b):
            svc.engine.client.indices.delete(index=f"{svc.settings.index_prefix}-*")
        svc_a.redis.flushdb()


def test_a_namespace_claimed_by_another_cluster_is_refused(settings: Settings,
                                                          services: Services) -> None:
    """Two deployments with the same prefix on different clusters would share a namespace:
    the second is refused with a message that says what to change."""
    claim(services)  # this engine's cluster: accepted, and again
    claim(services)
    services.redis.set(settings.redis_key("deployment"), "another-cluster-uuid")
    try:
        with pytest.raises(DeploymentConflict, match="ES_INTEREST_INDEX_PREFIX"):
            claim(services)
    finally:
        services.redis.delete(settings.redis_key("deployment"))


def test_a_worker_holding_a_scheduled_message_survives_a_redis_restart(
        settings: Settings, engine_name: str, tmp_path: Path) -> None:
    """kombu 5.7 crashed the worker (``None.hostname``) when Redis restarted while it held a
    message with a countdown: the worker stays up, keeps processing, and the scheduled
    message still runs (the visibility timeout hands it back)."""
    if engine_name != "elasticsearch":
        pytest.skip("a Redis fault, independent of the engine: checked on elasticsearch")
    redis = PrivateRedis(tmp_path, persistent=True)
    fast = replace(settings, redis_url=redis.url, task_visibility_s=10.0)
    celery = make_celery(fast)
    worker = WorkerProcess(fast, f"eta-{uuid.uuid4().hex[:6]}")
    try:
        worker.wait_ready()
        scheduled = celery.send_task("es_interest.ping", kwargs={"load_model": False},
                                     countdown=4)
        time.sleep(3)  # the worker holds it until its time
        redis.stop(graceful=True)
        time.sleep(2)
        redis.start()
        now = celery.send_task("es_interest.ping", kwargs={"load_model": False})
        assert now.get(timeout=60)["pid"]
        assert scheduled.get(timeout=90)["pid"]
        assert worker.process.poll() is None, f"the worker exited; see {worker.log_path}"
        assert "Unrecoverable error" not in worker.log_path.read_text()
    finally:
        worker.stop()
        redis.stop()
