"""Moving a deployment to another language model (a fine-tuned one: `es-interest train
--model`), while it serves.

Vectors of two models live in different spaces, so a switch is a new version of everything
embedded, gated like behaviour vectors:

1. The documents are copied into a new index behind the alias, each re-embedded with the new
   model; the alias moves and the deployment's content model (Redis) names the new one at
   the same moment. Processes read it at most every VERSION_TTL_S and embed queries, new
   documents and event texts with it from then on.
2. Once every process has seen it, what was embedded in that window (documents changed
   since, events' texts) is embedded again with the new model.
3. Users are re-folded from the event log (with a behaviour training where behaviour vectors
   exist: the text map is fitted on content vectors). Until a user is, the search leaves
   their content vectors out (their ``content_version`` names the old model); their
   behaviour vectors still count.

The old documents index is kept (delete it once satisfied), as by ``setup --reindex``.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from plugin import indices
from plugin.caches import content_model_key
from plugin.documents import parse_document
from plugin.engine import JSON, Engine
from plugin.onnx_export import model_key
from plugin.pipeline import behaviour
from plugin.pipeline.users import rebuild_all
from plugin.services import VERSION_TTL_S, ContentModel, Services

# Documents changed this long before the alias moved are embedded again afterwards.
MARGIN_MS = indices.CATCH_UP_MARGIN_MS
CATCH_UP_ROUNDS = 5  # rounds of re-reading documents written while they were re-embedded


def model_version(folder: Path) -> str:
    """A model folder's version: its name and a hash of the files that shape its output."""
    return model_key(folder.resolve())


def switch(services: Services, folder: Path, progress: Callable[[str], None] = print,
           counted: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Move the deployment to the model in ``folder`` (see the module's docstring);
    ``progress`` hears each step, ``counted`` each document copied."""
    settings, engine = services.settings, services.engine
    if not (folder / "modules.json").is_file():
        raise ValueError(f"{folder} is not a sentence-transformers model folder "
                         "(no modules.json)")
    target = ContentModel(str(folder.resolve()), model_version(folder))
    if services.content_model() == target:
        return {"switched": False, "reason": f"the deployment already runs {target.version}"}
    started = time.time()
    embedder = services.embedder_for(target.path)
    if embedder.dims != services.embedder.dims:
        # The events' text vectors are mapped at the model's size too.
        raise ValueError(f"{folder} makes {embedder.dims}-d vectors, the deployment's model "
                         f"{services.embedder.dims}-d: a switch keeps the size (a fine-tuned "
                         "model does); another size needs new indices (`setup --reindex`)")

    def embed(sources: list[JSON]) -> list[list[float]]:
        texts = [parse_document(s).embedded_text(settings.embed_fields,
                                                 settings.embed_title_cleanup)
                 for s in sources]
        return [[float(x) for x in v] for v in embedder.encode(texts)]

    def reembed(sources: list[JSON]) -> list[JSON]:
        return [{**s, "embedding": v} for s, v in zip(sources, embed(sources), strict=True)]

    def moved() -> None:
        services.redis.set(content_model_key(settings),
                           json.dumps({"path": target.path, "version": target.version}))
        services.content_models.clear()

    spec = indices.load_spec(settings, engine, "documents", embedder.dims)
    (current,) = engine.client.indices.get_alias(name=settings.docs_alias)
    progress(f"re-embedding {engine.count(settings.docs_alias)} documents into a new index "
             f"with {target.version}")
    migrated = indices.migrate(engine, spec, current, counted, transform=reembed,
                               on_moved=moved)
    moved_ms = int(time.time() * 1000)
    progress(migrated)
    # Every process embeds with the new model after this; what one embedded with the old
    # one before it saw the switch is embedded again.
    wait = max(VERSION_TTL_S, settings.doc_vector_cache_ttl_s)
    progress(f"waiting {wait:g} s for every process to take the new model")
    time.sleep(wait)
    engine.refresh(settings.docs_alias)
    late = _reembed_in_place(services, embed, {"query": {"range": {
        spec.changed_at_field: {"gte": moved_ms - MARGIN_MS}}}})
    texts = _reembed_event_texts(services, embedder)
    progress(f"{late} documents changed meanwhile and {texts} event texts embedded again")
    services.doc_vectors.clear()
    result: dict[str, Any] = {"switched": True, "model": target.path,
                              "version": target.version,
                              "documents": engine.count(settings.docs_alias),
                              "documents_caught_up": late, "event_texts": texts}
    if behaviour.current_version(services) is not None:
        progress("training behaviour vectors (the text map reads content vectors) and "
                 "re-folding every user")
        trained = behaviour.train(services)
        result["behaviour"] = trained
        if not trained.get("trained"):
            rebuilt, deferred = rebuild_all(services)
            result.update(users_refolded=rebuilt, users_deferred=len(deferred))
    else:
        progress("re-folding every user")
        rebuilt, deferred = rebuild_all(services)
        result.update(users_refolded=rebuilt, users_deferred=len(deferred))
    result["seconds"] = round(time.time() - started, 1)
    return result


def _reembed_in_place(services: Services, embed: Callable[[list[JSON]], list[list[float]]],
                      query: JSON) -> int:
    """The matching documents' ``embedding`` rewritten from their text, and nothing else of
    them: a partial update, conditional on the version read, so a concurrent write
    (popularity, behaviour, a new text) is never reverted; a document written meanwhile is
    read and embedded again. Returns how many were."""
    engine, alias = services.engine, services.settings.docs_alias
    done = 0
    for _ in range(CATCH_UP_ROUNDS):
        engine.refresh(alias)
        outcome = engine.bulk(_embedding_updates(engine, alias, query, embed))
        outcome.raise_if_refused("documents not embedded again", handled=[404, 409])
        done += len(outcome.written)
        if not outcome.conflicts:
            return done
        query = {"query": {"ids": {"values": [item.id for item in outcome.conflicts]}}}
    raise RuntimeError(f"documents kept changing while being embedded again "
                       f"({CATCH_UP_ROUNDS} rounds): run the switch again")


def _embedding_updates(engine: Engine, index: str, query: JSON,
                       embed: Callable[[list[JSON]], list[list[float]]]) -> Iterator[JSON]:
    """A conditional partial update of ``embedding`` per matching document, a batch of
    documents embedded at a time."""
    scan = iter(engine.scan(index, {**query, "seq_no_primary_term": True}))
    while batch := list(itertools.islice(scan, indices.TRANSFORM_BATCH)):
        vectors = embed([hit["_source"] for hit in batch])
        for hit, vector in zip(batch, vectors, strict=True):
            yield {"_op_type": "update", "_index": hit["_index"], "_id": hit["_id"],
                   "if_seq_no": hit["_seq_no"], "if_primary_term": hit["_primary_term"],
                   "doc": {"embedding": vector}}


def _reembed_event_texts(services: Services, embedder: Any) -> int:
    """The stored events' texts (queries, comments) embedded with ``embedder``, in place, a
    batch at a time."""
    index = services.settings.events_alias
    engine = services.engine
    engine.refresh(index)

    def updates() -> Iterator[JSON]:
        scan = (h for h in engine.scan(index, {"query": {"exists": {
            "field": "text_embedding"}}, "_source": ["text"]}) if h["_source"].get("text"))
        while batch := list(itertools.islice(scan, indices.TRANSFORM_BATCH)):
            vectors = embedder.encode([h["_source"]["text"] for h in batch])
            for hit, vector in zip(batch, vectors, strict=True):
                yield {"_op_type": "update", "_index": hit["_index"], "_id": hit["_id"],
                       "retry_on_conflict": 3,
                       "doc": {"text_embedding": [float(x) for x in vector]}}

    outcome = engine.bulk(updates())
    outcome.raise_if_refused("event texts not embedded again", handled=[404])
    engine.refresh(index)
    return len(outcome.written)
