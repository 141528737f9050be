"""Versioned indices behind aliases: documents, events and interests (``mappings/*.vN.json``).

A concrete index ``<alias>-v<N>[-<stamp>]`` sits behind each alias. ``setup`` creates what is
missing, adds new fields to a current index in place, and refuses a change the engine cannot
make in place (a field's type, the vector size) with a message that names ``--reindex``, which
copies everything into a new index and moves the alias atomically.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugin.config import Settings
from plugin.engine import JSON, Engine
from plugin.partitions import META_KEY as PARTITIONS_META_KEY

KINDS = ("documents", "events", "interests")
# Documents changed this long before a copy started are caught up after the alias moved.
CATCH_UP_MARGIN_MS = 5000


class IncompatibleMapping(RuntimeError):
    """The live index cannot take the new mapping in place."""


@dataclass(frozen=True)
class IndexSpec:
    kind: str
    alias: str
    version: int
    changed_at_field: str
    body: JSON

    @property
    def concrete(self) -> str:
        return f"{self.alias}-v{self.version}"


def _resolve_vectors(node: Any, vector_field: Callable[[bool, str], JSON]) -> Any:
    """Replace each ``{"$vector": true[, "indexed": false][, "space": "behaviour"]}`` with the
    engine's vector mapping (the model's size, or the behaviour vectors' size)."""
    if isinstance(node, dict):
        if node.get("$vector") is True:
            return copy.deepcopy(vector_field(bool(node.get("indexed", True)),
                                              str(node.get("space", "content"))))
        return {key: _resolve_vectors(value, vector_field) for key, value in node.items()}
    return node


def _has_indexed_vector(node: Any) -> bool:
    if isinstance(node, dict):
        if node.get("$vector") is True:
            return bool(node.get("indexed", True))
        return any(_has_indexed_vector(v) for v in node.values())
    return False


def alias_for(settings: Settings, kind: str) -> str:
    return {
        "documents": settings.docs_alias,
        "events": settings.events_alias,
        "interests": settings.interests_alias,
    }[kind]


def load_spec(settings: Settings, engine: Engine, kind: str, dims: int) -> IndexSpec:
    path = _latest_mapping(settings.mappings_dir, kind)
    raw = json.loads(path.read_text())
    def vector(indexed: bool, space: str) -> JSON:
        size = settings.behaviour_dims if space == "behaviour" else dims
        return engine.vector_field(size, m=settings.hnsw_m,
                                   ef_construction=settings.hnsw_ef_construction,
                                   quantized=settings.vector_quantized, indexed=indexed)

    body: JSON = {
        "settings": {**raw.get("settings", {}),
                     **engine.index_settings(knn=_has_indexed_vector(raw["mappings"]))},
        "mappings": _resolve_vectors(raw["mappings"], vector),
    }
    if kind == "interests":  # the partition count lives with the users it partitions
        body["mappings"]["_meta"] = {PARTITIONS_META_KEY: settings.event_partitions}
    return IndexSpec(kind, alias_for(settings, kind), int(raw["version"]),
                     str(raw["changed_at_field"]), body)


def _latest_mapping(directory: Path, kind: str) -> Path:
    candidates = sorted(directory.glob(f"{kind}.v*.json"),
                        key=lambda p: int(p.stem.rsplit(".v", 1)[1]))
    if not candidates:
        raise FileNotFoundError(f"no mapping for {kind!r} in {directory}")
    return candidates[-1]


def _version_of(alias: str, index: str) -> int:
    match = re.fullmatch(re.escape(alias) + r"-v(\d+)(?:-\d+)?", index)
    return int(match.group(1)) if match else 0


def _vector_size(field: JSON) -> int | None:
    size = field.get("dims", field.get("dimension"))
    return None if size is None else int(size)


def mapping_conflicts(current: JSON, wanted: JSON, path: str = "") -> list[str]:
    """Changes between two mappings' properties that cannot be made in place."""
    found = []
    current_props = current.get("properties", {})
    for name, field in wanted.get("properties", {}).items():
        if name not in current_props:
            continue  # a new field: added in place
        have = current_props[name]
        where = f"{path}{name}"
        if field.get("type", "object") != have.get("type", "object"):
            found.append(f"{where}: {have.get('type', 'object')} -> {field.get('type', 'object')}")
        elif _vector_size(field) != _vector_size(have):
            found.append(f"{where}: vector size {_vector_size(have)} -> {_vector_size(field)}")
        elif "properties" in field:
            found += mapping_conflicts(have, field, f"{where}.")
    return found


def ensure_index(engine: Engine, spec: IndexSpec, reindex: bool = False,
                 progress: Callable[[int], None] | None = None) -> str:
    """Create, upgrade in place, or (with ``reindex``) migrate one index. Returns what it did."""
    client = engine.client  # the index-admin API, the same in both engines' clients
    if not client.indices.exists_alias(name=spec.alias):
        if client.indices.exists(index=spec.alias):
            raise IncompatibleMapping(f"{spec.alias} is a concrete index, not an alias; "
                                      "rename it or choose another ES_INTEREST_INDEX_PREFIX")
        if not client.indices.exists(index=spec.concrete):
            client.indices.create(index=spec.concrete, body=spec.body)
        client.indices.put_alias(index=spec.concrete, name=spec.alias)
        return f"{spec.alias} -> {spec.concrete} (created)"
    targets = sorted(client.indices.get_alias(name=spec.alias))
    if len(targets) != 1:
        raise IncompatibleMapping(f"{spec.alias} points at {len(targets)} indices: {targets}")
    current = targets[0]
    live = client.indices.get_mapping(index=current)[current]["mappings"]
    conflicts = mapping_conflicts(live, spec.body["mappings"])
    outdated = _version_of(spec.alias, current) < spec.version
    if reindex and (conflicts or outdated):
        return migrate(engine, spec, current, progress)
    if conflicts:
        raise IncompatibleMapping(
            f"{current} cannot take mapping v{spec.version} in place ({'; '.join(conflicts)}); "
            "run `es-interest setup --reindex` to copy it into a new index behind the alias")
    synced = _sync_settings(engine, current, spec)
    missing = set(spec.body["mappings"].get("properties", {})) - set(live.get("properties", {}))
    if missing:
        wanted = spec.body["mappings"]["properties"]
        client.indices.put_mapping(index=current,
                                   body={"properties": {k: wanted[k] for k in sorted(missing)}})
        _wait_readable(engine, current)
        return f"{spec.alias} -> {current} (added fields: {', '.join(sorted(missing))})"
    return f"{spec.alias} -> {current} ({synced or 'up to date'})"


# Dynamic settings the mapping files set, which setup keeps in step on a live index.
SYNCED_SETTINGS = ("auto_expand_replicas", "merge")


def _flat(settings: JSON, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


def _sync_settings(engine: Engine, index: str, spec: IndexSpec) -> str:
    """Dynamic settings follow the mapping file in place: replicas (one per shard on a
    cluster, none on a single node: ``auto_expand_replicas``) and the merge policy."""
    wanted = _flat({k: v for k, v in spec.body.get("settings", {}).items()
                    if k in SYNCED_SETTINGS})
    if not wanted:
        return ""
    live = _flat(engine.client.indices.get_settings(index=index)[index]["settings"]["index"])
    changed = {k: v for k, v in wanted.items() if live.get(k) != v}
    if not changed:
        return ""
    engine.client.indices.put_settings(index=index, body={"index": changed})
    return "settings: " + ", ".join(f"{k} {v}" for k, v in sorted(changed.items()))


def _wait_readable(engine: Engine, index: str, tries: int = 100) -> None:
    """OpenSearch 2.19 answers the first read by id after a mapping change with 503 ("no such
    index") on k-NN indices; wait until a read of a missing id answers "not found"."""
    for attempt in range(tries):
        try:
            engine.get_versioned(index, "es-interest-readiness-probe")
            return
        except Exception:
            if attempt == tries - 1:
                raise
            time.sleep(0.05)


# Sources go through a migration's ``transform`` this many at a time (a model's batch).
TRANSFORM_BATCH = 256
Transform = Callable[[list[JSON]], list[JSON]]


def migrate(engine: Engine, spec: IndexSpec, old: str,
            progress: Callable[[int], None] | None = None, *,
            transform: Transform | None = None,
            on_moved: Callable[[], None] | None = None) -> str:
    """Copy ``old`` into a new index for ``spec``, move the alias atomically, catch up.

    Scan + bulk rather than _reindex (a module some engine builds lack). Writes that land on
    the old index while the copy runs are copied again after the alias moved (by the spec's
    change-time field); the old index is kept, so nothing can be lost. ``transform`` rewrites
    the sources a batch at a time (a model switch re-embeds them); ``on_moved`` runs right
    after the alias moved.
    """
    client = engine.client
    new = f"{spec.alias}-v{spec.version}-{int(time.time())}"
    client.indices.create(index=new, body=spec.body)
    started_ms = int(time.time() * 1000) - CATCH_UP_MARGIN_MS
    mappings = spec.body["mappings"]
    # A strict mapping refuses fields it dropped (old documents still carry them): leave them out.
    keep = set(mappings.get("properties", {})) if mappings.get("dynamic") == "strict" else None
    copied = copy_documents(engine, old, new, {"query": {"match_all": {}}}, progress, keep,
                            transform)
    client.indices.update_aliases(body={"actions": [
        {"remove": {"index": old, "alias": spec.alias}},
        {"add": {"index": new, "alias": spec.alias}},
    ]})
    if on_moved is not None:
        on_moved()
    engine.refresh(old)
    late = copy_documents(engine, old, new,
                 {"query": {"range": {spec.changed_at_field: {"gte": started_ms}}}}, progress, keep,
                 transform)
    engine.refresh(new)
    old_count, new_count = engine.count(old), engine.count(new)
    if new_count < old_count:
        raise RuntimeError(f"migration copied {new_count} of {old_count} documents from {old}; "
                           f"the alias now points at {new}, {old} is untouched")
    return (f"{spec.alias} -> {new} (migrated {copied} documents from {old}, {late} caught up; "
            f"{old} kept: delete it once satisfied)")


def copy_documents(engine: Engine, old: str, new: str, query: JSON,
                   progress: Callable[[int], None] | None, keep: set[str] | None = None,
                   transform: Transform | None = None) -> int:
    """Copy matching documents (``old`` may be ``new``: a rewrite in place); with ``keep``,
    only those top-level fields; with ``transform``, rewritten a batch at a time."""
    def source(hit: JSON) -> JSON:
        src: JSON = hit["_source"]
        return src if keep is None else {k: v for k, v in src.items() if k in keep}

    def hits() -> Iterator[tuple[str, JSON]]:
        if transform is None:
            yield from ((hit["_id"], source(hit)) for hit in engine.scan(old, query))
            return
        scan = iter(engine.scan(old, query))
        while batch := list(itertools.islice(scan, TRANSFORM_BATCH)):
            yield from zip([hit["_id"] for hit in batch],
                           transform([source(hit) for hit in batch]), strict=True)

    actions = ({"_op_type": "index", "_index": new, "_id": doc_id, "_source": src}
               for doc_id, src in hits())
    outcome = engine.bulk(actions, progress=progress)
    outcome.raise_if_refused(f"documents not copied from {old} to {new}")
    return len(outcome.written)


def setup_indices(engine: Engine, settings: Settings, dims: int, reindex: bool = False,
                  progress: Callable[[int], None] | None = None) -> list[str]:
    return [ensure_index(engine, load_spec(settings, engine, kind, dims), reindex, progress)
            for kind in KINDS]
