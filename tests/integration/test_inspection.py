"""`es-interest inspect` on the real Elasticsearch engines, through eland."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from plugin import pipeline
from plugin.engine import EngineKind
from plugin.inspection import InspectionUnavailable, documents, events, users
from plugin.services import Services
from tests.conftest import ROOT, settings_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fed(services: Services) -> str:
    """Five documents, 12 events of three users, one event waiting for a missing document."""
    run = uuid.uuid4().hex[:6]
    docs = [{"id": f"in-{i}-{run}", "title": f"Inspected document {i}", "tags": ["x"]}
            for i in range(5)]
    assert not pipeline.index_documents(services, docs, refresh=True).errors
    now = time.time()
    batch = [{"event_id": f"in-{i}-{run}", "user_id": f"inspect-{i % 3}-{run}",
              "doc_id": docs[0 if i < 6 else i % 4]["id"], "type": ["like", "click"][i % 2],
              "timestamp": now - 1000 * i} for i in range(12)]
    batch.append({"event_id": f"in-wait-{run}", "user_id": f"inspect-0-{run}",
                  "doc_id": f"missing-{run}", "type": "like", "timestamp": now})
    report = pipeline.ingest_events(services, batch, refresh=True)
    assert report.pending == [f"in-wait-{run}"]
    for alias in (services.settings.events_alias, services.settings.interests_alias):
        services.engine.client.indices.refresh(index=alias)
    return run


def test_reports_count_what_was_fed(services: Services, fed: str) -> None:
    engine, settings = services.engine, services.settings
    if engine.kind is not EngineKind.ELASTICSEARCH:
        with pytest.raises(InspectionUnavailable, match="Elasticsearch only"):
            users(engine, settings)
        pytest.skip("eland reads Elasticsearch only")
    mine = f"-{fed}"
    seen = users(engine, settings, top=10_000)
    stale = seen["most stale"]
    ours = stale[stale["user_id"].str.endswith(mine)]
    assert len(ours) == 3 and (ours["event_count"] == 4).all()
    assert (ours["days since last event"] >= 0).all()
    assert seen["summary"]["with long-term vector"][0] >= 3
    counted = events(engine, settings, top=10_000)
    per = counted["per type and status"]
    pending = per[(per["type"] == "like") & (per["status"] == "pending")]["events"]
    assert int(pending.sum()) >= 1
    active = counted["most active users"]
    assert set(active[active["user_id"].str.endswith(mine)]["user_id"]) == {
        f"inspect-{u}-{fed}" for u in range(3)}
    docs = documents(engine, settings, top=10_000)
    top = docs["most interacted"].set_index("doc_id")["events"]
    # in-0: the first six events and event 8 (8 % 4 == 0); in-1: event 9 only.
    assert top[f"in-0-{fed}"] == 7 and top[f"in-1-{fed}"] == 1
    assert docs["summary"]["without embedding"][0] == 0


def test_the_command_prints_and_writes_csv(services: Services, settings: object, fed: str,
                                           tmp_path: Path) -> None:
    out = tmp_path / "events.csv"
    done = subprocess.run([sys.executable, "-m", "plugin.cli", "--quiet", "inspect", "events",
                           "--csv", str(out)], cwd=ROOT, env=settings_env(settings),  # type: ignore[arg-type]
                          capture_output=True, text=True, timeout=300)
    if services.engine.kind is not EngineKind.ELASTICSEARCH:
        assert done.returncode != 0 and "Elasticsearch only" in done.stderr
        return
    assert done.returncode == 0, done.stderr
    assert "== per type and status" in done.stdout and "pending" in done.stdout
    lines = out.read_text().splitlines()
    assert lines[0] == "table,type,status,events,user_id"
    # Other tests' users may be more active: this run's pending event is sure to be counted.
    assert any(line.startswith("per type and status,like,pending,") for line in lines)
    assert any(line.startswith("most active users,") for line in lines)
