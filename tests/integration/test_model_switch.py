"""Switching a running deployment to another language model (`es-interest model switch`), with
the real model, engine and Redis: documents, event texts and users move to the new model's
space together, and a user not re-folded yet never mixes the two."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from plugin import pipeline
from plugin.caches import forget_users
from plugin.config import LOCAL_ENGINE_URLS, load_settings
from plugin.documents import parse_document
from plugin.embedding import default_model_path
from plugin.pipeline.model_switch import model_version, switch
from plugin.profile import describe_user
from plugin.search import SearchParams, search
from plugin.services import Services
from tests.conftest import RUN_ID, isolated_services

pytestmark = pytest.mark.integration

DOCS = [{"id": f"doc-{i}", "title": title, "tags": tags} for i, (title, tags) in enumerate([
    ("Bebop jazz record on vinyl", ["music"]), ("Swing jazz record on vinyl", ["music"]),
    ("Trail running shoes", ["sport"]), ("Road running shoes", ["sport"]),
    ("Italian cookbook", ["food"]), ("Thai cookbook", ["food"])])]


@pytest.fixture(scope="module")
def deployment(stack: None) -> Iterator[Services]:
    settings = replace(load_settings({}), engine_url=LOCAL_ENGINE_URLS["elasticsearch"],
                       redis_url="redis://127.0.0.1:6379/12",
                       index_prefix=f"test-{RUN_ID}-switch", doc_vector_cache_ttl_s=1.0)
    yield from isolated_services(settings)


@pytest.fixture(scope="module")
def nudged_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped model with its word embeddings nudged (a fixed seed): the same size and
    kind of model, other vectors, as a fine-tuned one would be."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(default_model_path(), device="cpu")
    weights = model[0].auto_model.embeddings.word_embeddings.weight
    with torch.no_grad():
        weights.add_(torch.randn(weights.shape, generator=torch.Generator().manual_seed(0))
                     * 0.05)
    folder = tmp_path_factory.mktemp("models") / "nudged-minilm"
    model.save(str(folder))
    return folder


def _texts(svc: Services) -> list[str]:
    s = svc.settings
    return [parse_document(d).embedded_text(s.embed_fields, s.embed_title_cleanup) for d in DOCS]


def _stored_embeddings(svc: Services) -> np.ndarray:
    svc.engine.refresh(svc.settings.docs_alias)
    found = svc.engine.mget_versioned(svc.settings.docs_alias, [d["id"] for d in DOCS])
    return np.array([found[d["id"]][0]["embedding"] for d in DOCS])


def test_a_switch_moves_documents_event_texts_and_users_to_the_new_model(
        deployment: Services, nudged_model: Path) -> None:
    svc = deployment
    assert not pipeline.index_documents(svc, DOCS, refresh=True).errors
    user, comment = f"u-{uuid.uuid4().hex[:6]}", "I love old jazz records"
    events = [{"event_id": f"e-{uuid.uuid4().hex}", "user_id": user, "doc_id": doc,
               "type": "like", "timestamp": 1.7e9 + n} for n, doc in enumerate(["doc-0", "doc-1"])]
    events.append({"event_id": f"e-{uuid.uuid4().hex}", "user_id": user, "doc_id": "doc-0",
                   "type": "comment", "text": comment, "timestamp": 1.7e9 + 5})
    assert not pipeline.ingest_events(svc, events, refresh=True).errors
    old = _stored_embeddings(svc)
    before = search(svc, SearchParams("records", user_id=user, explain=True, use_cache=False))
    assert before.personalized

    result = switch(svc, nudged_model, progress=lambda _: None)
    assert result["switched"] and result["documents"] == len(DOCS)
    assert result["event_texts"] == 1 and result["users_refolded"] == 1
    version = model_version(nudged_model)
    assert svc.content_model().version == version
    new = svc.embedder_for(str(nudged_model.resolve()))
    # Documents: the new model's vectors of their texts, far from the old ones.
    stored = _stored_embeddings(svc)
    np.testing.assert_allclose(stored, new.encode(_texts(svc)), atol=1e-4)
    assert float(np.min(np.sum(stored * old, axis=1))) < 0.99
    # Event texts too, and the user re-folded from them in the new space.
    svc.engine.refresh(svc.settings.events_alias)
    hits = svc.engine.search(svc.settings.events_alias, {
        "query": {"term": {"user_id": user}}, "size": 10})["hits"]["hits"]
    texts = [h["_source"] for h in hits if h["_source"].get("text")]
    np.testing.assert_allclose(texts[0]["text_embedding"], new.encode_one(comment), atol=1e-4)
    source, _, _ = svc.engine.get_versioned(svc.settings.interests_alias, user)  # type: ignore[misc]
    assert source["state"]["content_version"] == version
    after = search(svc, SearchParams("records", user_id=user, explain=True, use_cache=False,
                                     strategy="knn_linear"))
    assert after.personalized and after.hits[0]["components"]["interest_long"] is not None
    # The query was embedded with the new model.
    sent = [c["query_vector"] for c in after.request.get("knn", [])]
    assert any(np.allclose(v, new.encode_one("records"), atol=1e-4) for v in sent)

    # A user still folded with the old model (a re-fold not there yet) gets no content term.
    svc.engine.client.index(index=svc.settings.interests_alias, id=user, refresh=True,
                            document={**source, "state": {**source["state"],
                                                          "content_version": ""}})
    forget_users(svc.redis, svc.settings, [user])
    svc.user_states.clear()
    stale = search(svc, SearchParams("records", user_id=user, explain=True, use_cache=False))
    assert not stale.personalized and "another model" in (stale.reason or "")
    page = describe_user(svc, user)  # the inspector says so too
    assert page is not None and not page["horizons"]["long"]["present"]
    assert page["horizons"]["long"]["current_version"] == version
    # The same model again: nothing to do.
    assert switch(svc, nudged_model, progress=lambda _: None)["switched"] is False


def test_the_catch_up_rewrites_only_the_embedding_and_never_reverts_a_concurrent_write(
        deployment: Services) -> None:
    """A write that lands between the catch-up's read and its update (here: inside the
    embedding step) is kept, and the document is embedded again from what it holds then."""
    from plugin.pipeline.model_switch import _reembed_in_place

    svc = deployment
    doc = {"id": f"late-{uuid.uuid4().hex[:6]}", "title": "Bebop jazz record", "tags": ["music"]}
    assert not pipeline.index_documents(svc, [doc], refresh=True).errors
    alias, rounds = svc.settings.docs_alias, []

    def embed(sources: list[dict[str, object]]) -> list[list[float]]:
        rounds.append([s["title"] for s in sources])
        if len(rounds) == 1:  # a concurrent writer: popularity and a new title
            svc.engine.client.update(index=alias, id=doc["id"], refresh=True, doc={
                "popularity": 7.0, "title": "Swing jazz record"})
        return [_unit(len(rounds), svc.embedder.dims) for _ in sources]

    done = _reembed_in_place(svc, embed, {"query": {"ids": {"values": [doc["id"]]}}})
    stored = svc.engine.client.get(index=alias, id=doc["id"])["_source"]
    assert done == 1 and rounds == [["Bebop jazz record"], ["Swing jazz record"]]
    assert stored["popularity"] == 7.0 and stored["title"] == "Swing jazz record"
    assert np.allclose(stored["embedding"], _unit(2, svc.embedder.dims), atol=1e-6)


def _unit(axis: int, dims: int) -> list[float]:
    return [1.0 if n == axis else 0.0 for n in range(dims)]
