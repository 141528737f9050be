"""End to end through real workers: documents and feedback change one user's ranking only."""

from __future__ import annotations

import time

import pytest

from plugin import search as search_service
from plugin.services import Services

pytestmark = pytest.mark.integration

ANIMALS = ["Dog training tips for puppies", "Caring for your cat at home",
           "Horse riding lessons for beginners", "Feeding pet rabbits and guinea pigs"]
CARS = ["Changing the oil in your car engine", "Choosing winter tires for your car",
        "Electric cars and charging stations", "Repairing a motorcycle gearbox"]


def test_feedback_moves_only_that_users_results(services: Services, worker, celery_client) -> None:  # type: ignore[no-untyped-def]
    docs = [{"id": f"a{i}", "title": t, "tags": ["animals"]} for i, t in enumerate(ANIMALS)]
    docs += [{"id": f"c{i}", "title": t, "tags": ["cars"]} for i, t in enumerate(CARS)]
    report = celery_client.send_task("es_interest.index_documents", args=[docs],
                                     kwargs={"refresh": True}).get(timeout=120)
    assert sorted(report["done"]) == sorted(d["id"] for d in docs) and not report["errors"]

    now = time.time()
    likes = [{"event_id": f"like-{i}", "user_id": "alice", "doc_id": f"c{i}", "type": "like",
              "timestamp": now - 10 + i} for i in range(3)]
    report = celery_client.send_task("es_interest.ingest_events", args=[likes]).get(timeout=120)
    assert sorted(report["done"]) == sorted(e["event_id"] for e in likes)

    query = "care and maintenance tips"
    alice = search_service.search(services, query, user_id="alice", size=8)
    bob = search_service.search(services, query, user_id="bob", size=8)
    assert alice.personalized and not bob.personalized
    assert bob.reason == "user has no interest vector yet"

    def car_rank(result: search_service.SearchResult) -> float:
        ranks = [i for i, h in enumerate(result.hits) if h["id"].startswith("c")]
        return sum(ranks) / len(ranks)

    assert car_rank(alice) < car_rank(bob)
    assert [h["id"] for h in alice.hits[:3]] != [h["id"] for h in bob.hits[:3]]
