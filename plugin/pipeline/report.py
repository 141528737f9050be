"""The per-item report every batch returns: a bad item never stops the rest."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class BatchReport:
    done: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)
    # Users read from the engine, written, and writes the engine refused (another writer
    # got there first): what one owner per user saves shows here.
    users: Counter[str] = field(default_factory=Counter)

    def error(self, position: int, item_id: str | None, reason: str) -> None:
        self.errors.append({"position": position, "id": item_id, "error": reason})

    def as_dict(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "errors": self.errors,
            "duplicates": self.duplicates,
            "pending": self.pending,
            "notes": self.notes,
            "users": {k: self.users[k] for k in ("read", "written", "refused")},
        }


def raw_id(raw: Any, *keys: str) -> str | None:
    """The id a raw (maybe invalid) item claims, for its error report."""
    if isinstance(raw, Mapping):
        for key in keys:
            if raw.get(key) is not None:
                return str(raw[key])
    return None
