"""Issue 19: erasure that holds. An id with ``/`` can be erased through the API; an event that
arrives after the erase but happened (or was accepted) before it does not bring the user back;
dead letters and task results forget the user's events; a later event starts a new history."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from typing import Any

import pytest

from plugin import dead_letter, pipeline
from plugin.api import create_app
from plugin.config import Settings
from plugin.services import Services

pytestmark = pytest.mark.integration


def test_an_erase_holds_against_late_events_and_leaves_no_trace(
        settings: Settings, services: Services, celery_client: Any, worker: Any) -> None:
    run = uuid.uuid4().hex[:6]
    user = f"team/{run}/alice"  # accepted by /events, so it must be erasable too
    client = create_app(replace(settings, api_auth="disabled")).test_client()
    doc = {"id": f"er-{run}", "title": "Snow chains for winter roads", "tags": ["cars"]}
    assert not pipeline.index_documents(services, [doc], refresh=True).errors
    before = time.time() - 60
    events = [{"event_id": f"er-{i}-{run}", "user_id": user, "doc_id": doc["id"],
               "type": "like", "timestamp": before + i} for i in range(3)]
    report = celery_client.send_task("es_interest.ingest_events", args=[events],
                                     kwargs={"refresh": True})
    assert len(report.get(timeout=120)["done"]) == 3
    quoted = user.replace("/", "%2F")
    assert client.get(f"/users/{user}/interest").status_code == 200
    assert client.get(f"/users/{quoted}/interest").status_code == 200
    # A dead letter that holds one of the user's events beside someone else's.
    other = {"event_id": f"other-{run}", "user_id": f"bob-{run}", "doc_id": doc["id"],
             "type": "like", "timestamp": before}
    dead_letter.client(celery_client).rpush(dead_letter.key(celery_client), json.dumps({
        "task": "es_interest.ingest_events", "id": run, "args": [[events[0], other]],
        "kwargs": {}, "error": "EngineBusy: test", "failed_at": before, "retries": 6}))

    erased = client.delete(f"/users/{quoted}")
    assert erased.status_code == 200, erased.json
    deleted = erased.json["deleted"]
    assert deleted["events"] == 3 and deleted["interests"] == 1
    assert deleted["dead_letters"] == 1 and deleted["task_results"] >= 1
    assert client.get(f"/users/{user}/interest").status_code == 404
    # The task result and the dead letter no longer name the user's events.
    assert celery_client.AsyncResult(report.id).get(timeout=10)["done"] == []
    letters = [e for e in dead_letter.entries(celery_client) if e["id"] == run]
    assert [ev["user_id"] for ev in letters[0]["args"][0]] == [f"bob-{run}"]

    # An event queued during the erase (it happened before it) arrives: refused with a reason.
    late = {"event_id": f"er-late-{run}", "user_id": user, "doc_id": doc["id"], "type": "like",
            "timestamp": before + 10}
    late_report = celery_client.send_task("es_interest.ingest_events", args=[[late]],
                                          kwargs={"refresh": True}).get(timeout=120)
    assert late_report["done"] == [] and "erased" in late_report["errors"][0]["error"]
    assert client.get(f"/users/{user}/interest").status_code == 404
    # The API's second pass (after the visibility timeout) changes nothing more.
    again = pipeline.erase_user(services, user, deleted["erased_at_ms"])
    assert again["events"] == 0 and again["interests"] == 0

    # A new interaction after the erase is a new history, folded from it alone.
    time.sleep(0.01)
    fresh = {**late, "event_id": f"er-new-{run}", "timestamp": time.time()}
    new_report = celery_client.send_task("es_interest.ingest_events", args=[[fresh]],
                                         kwargs={"refresh": True}).get(timeout=120)
    assert new_report["done"] == [fresh["event_id"]]
    found = services.engine.get_versioned(settings.interests_alias, user)
    assert found is not None and found[0]["event_count"] == 1
    dead_letter.drop_user(celery_client, f"bob-{run}")
