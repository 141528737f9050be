"""Versioned indices behind aliases: documents, events and interests (``mappings/*.vN.json``)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugin.config import Settings
from plugin.engine import JSON, Engine

KINDS = ("documents", "events", "interests")


@dataclass(frozen=True)
class IndexSpec:
    kind: str
    alias: str
    version: int
    body: JSON

    @property
    def concrete(self) -> str:
        return f"{self.alias}-v{self.version}"


def _resolve_vectors(node: Any, vector_field: JSON) -> Any:
    """Replace every ``{"$vector": true}`` placeholder with the engine's vector mapping."""
    if isinstance(node, dict):
        if node.get("$vector") is True:
            return copy.deepcopy(vector_field)
        return {key: _resolve_vectors(value, vector_field) for key, value in node.items()}
    return node


def alias_for(settings: Settings, kind: str) -> str:
    return {
        "documents": settings.docs_alias,
        "events": settings.events_alias,
        "interests": settings.interests_alias,
    }[kind]


def load_spec(settings: Settings, engine: Engine, kind: str, dims: int) -> IndexSpec:
    path = _latest_mapping(settings.mappings_dir, kind)
    raw = json.loads(path.read_text())
    body: JSON = {
        "settings": {**raw.get("settings", {}), **engine.index_settings()},
        "mappings": _resolve_vectors(raw["mappings"], engine.vector_field(dims)),
    }
    return IndexSpec(kind, alias_for(settings, kind), int(raw["version"]), body)


def _latest_mapping(directory: Path, kind: str) -> Path:
    candidates = sorted(directory.glob(f"{kind}.v*.json"),
                        key=lambda p: int(p.stem.rsplit(".v", 1)[1]))
    if not candidates:
        raise FileNotFoundError(f"no mapping for {kind!r} in {directory}")
    return candidates[-1]


def ensure_index(engine: Engine, spec: IndexSpec) -> str:
    """Create the spec's concrete index and point its alias at it, if not there yet.

    Returns what was done, in words, for the CLI.
    """
    client = engine.client
    if client.indices.exists_alias(name=spec.alias):
        current = sorted(client.indices.get_alias(name=spec.alias).keys())
        return f"{spec.alias} -> {', '.join(current)} (exists)"
    if not client.indices.exists(index=spec.concrete):
        client.indices.create(index=spec.concrete, body=spec.body)
    client.indices.put_alias(index=spec.concrete, name=spec.alias)
    return f"{spec.alias} -> {spec.concrete} (created)"


def setup_indices(engine: Engine, settings: Settings, dims: int) -> list[str]:
    return [ensure_index(engine, load_spec(settings, engine, kind, dims)) for kind in KINDS]
