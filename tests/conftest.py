"""Fixtures for integration tests: the real engines, Redis, model and Celery workers.

Engines come from `make up` (started here if they are not answering). Each test session uses
its own index prefix and Redis databases, and removes its indices at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import redis as redis_lib

from plugin.config import LOCAL_ENGINE_URLS, Settings, load_settings
from plugin.services import Services

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = uuid.uuid4().hex[:8]
# Every engine `make up` starts: Elasticsearch 9.5.3 (Painless), OpenSearch 3.5.0, and the
# compatibility lines Elasticsearch 8.19 and OpenSearch 2.19.1.
LOCAL_ENGINES = dict(LOCAL_ENGINE_URLS)
# `make up-cluster`'s three Elasticsearch 9.5.3 nodes (one replica per shard): the tests of
# CLUSTER_MODULES run there too, and tests/integration/test_cluster.py kills one of its nodes.
CLUSTER_URL = "http://127.0.0.1:9210"
CLUSTER_URLS = [f"http://127.0.0.1:{9210 + n}" for n in range(3)]
CLUSTER_MODULES = {"test_pipeline", "test_engines", "test_api", "test_cluster"}
# The compatibility lines run the engine, pipeline and search tests; the primary engines
# (Elasticsearch 9.5.3, OpenSearch 3.5.0) run everything.
COMPATIBILITY_MODULES = {"test_pipeline", "test_engines", "test_api"}
ENGINE_MODULES = {"cluster": CLUSTER_MODULES, "elasticsearch8": COMPATIBILITY_MODULES,
                  "opensearch2": COMPATIBILITY_MODULES}
# A cluster of the user's (e.g. Elastic's own build) joins the parametrization.
EXTERNAL_ES = os.environ.get("ES_INTEREST_TEST_ES_URL")
ENGINE_URLS = {**LOCAL_ENGINES, "cluster": CLUSTER_URL,
               **({"external": EXTERNAL_ES} if EXTERNAL_ES else {})}
REDIS_DBS = {"elasticsearch": 11, "opensearch": 12, "elasticsearch8": 14, "opensearch2": 8,
             "external": 13, "cluster": 9}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The cluster and the compatibility lines run the pipeline, engine and search tests; the
    rest (faults of one process, the inspector, the evaluation) run on the primary engines."""
    for item in items:
        params = getattr(item, "callspec", None)
        engine = params.params.get("engine_name") if params is not None else None
        modules = ENGINE_MODULES.get(engine) if isinstance(engine, str) else None
        if modules is not None and item.module is not None and \
                item.module.__name__.rsplit(".", 1)[-1] not in modules:
            item.add_marker(pytest.mark.skip(
                reason=f"{engine} runs {', '.join(sorted(modules))}; the primary engines run "
                       "the rest"))


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def stack() -> None:
    """Make sure `make up`'s services answer; start them if not."""
    if not all(_answers(u) for u in LOCAL_ENGINES.values()):
        subprocess.run([str(ROOT / "devstack" / "stack.sh"), "up"], check=True)
    if not all(_answers(u) for u in CLUSTER_URLS):
        subprocess.run([str(ROOT / "devstack" / "stack.sh"), "up-cluster"], check=True)
    redis_lib.Redis().ping()


@pytest.fixture(scope="session", params=sorted(ENGINE_URLS))
def engine_name(request: pytest.FixtureRequest, stack: None) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="session")
def settings(engine_name: str) -> Settings:
    base = load_settings({})
    return replace(
        base,
        engine_url=ENGINE_URLS[engine_name],
        redis_url=f"redis://127.0.0.1:6379/{REDIS_DBS[engine_name]}",
        index_prefix=f"test-{RUN_ID}-{engine_name}",
        # Workers would retrain behaviour vectors on their own mid-session; the tests that
        # want it say so (tests/integration/test_learning.py).
        behaviour_first_training_events=10**9,
        # Two cores under six engine JVMs can take longer than the 100 ms a user's vectors may
        # take to load in service; the tests check what personalization does, and the budget
        # has its own test (test_api.py::test_a_personalization_fault_answers_unpersonalized).
        user_vector_budget_ms=5000.0,
    )


def isolated_services(settings: Settings) -> Iterator[Services]:
    """Services on an empty Redis database and fresh indices, removed afterwards."""
    from plugin.indices import setup_indices

    svc = Services(settings)
    svc.redis.flushdb()
    setup_indices(svc.engine, settings, svc.embedder.dims)
    yield svc
    svc.engine.client.indices.delete(index=f"{settings.index_prefix}-*")
    svc.redis.flushdb()


@pytest.fixture(scope="session")
def services(settings: Settings) -> Iterator[Services]:
    yield from isolated_services(settings)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process the same settings."""
    return {
        **os.environ,
        "ES_INTEREST_ENGINE_URL": settings.engine_url,
        "ES_INTEREST_REDIS_URL": settings.redis_url,
        "ES_INTEREST_INDEX_PREFIX": settings.index_prefix,
        "ES_INTEREST_TASK_VISIBILITY_S": str(settings.task_visibility_s),
        "ES_INTEREST_BEHAVIOUR_FIRST_TRAINING_EVENTS": str(
            settings.behaviour_first_training_events),
        "ES_INTEREST_BEHAVIOUR_TRAINING_DELAY_S": str(settings.behaviour_training_delay_s),
        "ES_INTEREST_BEHAVIOUR_TRAINING_MIN_INTERVAL_S": str(
            settings.behaviour_training_min_interval_s),
        "ES_INTEREST_POPULARITY_FLUSH_S": str(settings.popularity_flush_s),
        "ES_INTEREST_BEHAVIOUR_DIMS": str(settings.behaviour_dims),
        "ES_INTEREST_BEHAVIOUR_MIN_INTERACTIONS": str(settings.behaviour_min_interactions),
        "ES_INTEREST_POPULARITY_HALF_LIFE_DAYS": str(settings.popularity_half_life_s / 86400),
        "HF_HUB_OFFLINE": "1",
    }


class WorkerProcess:
    def __init__(self, settings: Settings, name: str, concurrency: int = 1,
                 args: Sequence[str] = ()) -> None:
        self.log_path = ROOT / ".devstack" / f"test-worker-{name}-{RUN_ID}.log"
        self.log_path.parent.mkdir(exist_ok=True)
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "plugin.cli", "worker", f"--concurrency={concurrency}",
             "--loglevel=info", *args, "-n", f"{name}-{RUN_ID}@%h", "--without-gossip",
             "--without-mingle"],
            cwd=ROOT, env=settings_env(settings), stdout=self.log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Until Celery logs that this worker consumes its queues."""
        deadline = time.monotonic() + timeout_s
        while " ready." not in self.log_path.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready; see {self.log_path}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="session")
def celery_client(settings: Settings, services: Services):  # type: ignore[no-untyped-def]
    from plugin.celery_app import make_celery

    return make_celery(settings)


@pytest.fixture(scope="session")
def worker(settings: Settings, services: Services, celery_client, engine_name: str):  # type: ignore[no-untyped-def]
    """A real Celery worker process on this engine's Redis broker."""
    proc = WorkerProcess(settings, f"w-{engine_name}")
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.process.poll() is not None:
                raise RuntimeError(f"worker exited; see {proc.log_path}")
            try:
                celery_client.send_task("es_interest.ping").get(timeout=10)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield proc
    finally:
        proc.stop()
