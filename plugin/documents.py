"""Validation of incoming documents and the text that gets embedded for them."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from plugin.config import EMBED_FIELDS
from plugin.storable import MAX_ID_BYTES, storable_json, storable_text

# What a document may carry; anything else is dropped before it is queued.
FIELDS = ("id", "doc_id", "title", "body", "tags", "metadata", "embedding")
# The id as a keyword with doc values: what a search that wants ids only reads.
DOC_ID_FIELD = "doc_id"
# Written by the workers, never by clients: decayed interactions (plugin/pipeline/popularity.py).
POPULARITY_FIELD = "popularity"
# Written by `es-interest train`: the behaviour (collaborative) vector and its version.
BEHAVIOUR_FIELD = "behaviour"


# A title's trailing year ("Toy Story (1995)", "Fargo (1996-1998)"): left in, it makes films
# of one year look alike to the model more than films of one kind.
TRAILING_YEAR = re.compile(r"\s*\(\d{4}(?:\s*[-\u2013]\s*\d{0,4})?\)\s*$")


class InvalidDocument(ValueError):
    """A document that cannot be indexed; the message says why."""


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    body: str = ""
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # A vector the client computed itself (same model and size); None: the worker embeds.
    embedding: tuple[float, ...] | None = None

    @property
    def text(self) -> str:
        """All its text: title, tags and body, in the order of their signal."""
        return self.embedded_text(EMBED_FIELDS, "none")

    def embedded_text(self, fields: Sequence[str], cleanup: str) -> str:
        """What the model embeds: the deployment's ``embed_fields`` in that order, the
        title cleaned (``embed_title_cleanup``: ``years`` drops a trailing release year)."""
        title = TRAILING_YEAR.sub("", self.title) if cleanup == "years" else self.title
        values = {"title": title, "tags": ", ".join(self.tags), "body": self.body}
        return " | ".join(values[f] for f in fields if values[f]) or self.title

    def source(self) -> dict[str, Any]:
        return {
            DOC_ID_FIELD: self.doc_id,
            "title": self.title,
            "body": self.body,
            "tags": list(self.tags),
            "metadata": dict(self.metadata),
        }


def parse_document(raw: Mapping[str, Any]) -> Document:
    if not isinstance(raw, Mapping):
        raise InvalidDocument("a document must be a JSON object")
    doc_id = raw.get("id", raw.get("doc_id"))
    if doc_id is None or str(doc_id).strip() == "":
        raise InvalidDocument("missing 'id'")
    title = raw.get("title") or ""
    body = raw.get("body") or ""
    if not isinstance(title, str) or not isinstance(body, str):
        raise InvalidDocument("'title' and 'body' must be strings")
    tags_raw = raw.get("tags") or []
    if isinstance(tags_raw, str):
        tags_raw = [t for t in tags_raw.split("|") if t]
    if not isinstance(tags_raw, list) or not all(isinstance(t, str) for t in tags_raw):
        raise InvalidDocument("'tags' must be a list of strings")
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise InvalidDocument("'metadata' must be an object")
    embedding = _embedding(raw.get("embedding"))
    storable_text(str(doc_id), "id", InvalidDocument, MAX_ID_BYTES)
    for tag in tags_raw:
        # Tags are keywords: a term over the engine's limit would fail the whole bulk item.
        storable_text(tag, "tags", InvalidDocument, MAX_ID_BYTES)
    for name, value in (("title", title), ("body", body), ("tags", tags_raw),
                        ("metadata", metadata)):
        storable_json(value, name, InvalidDocument)
    doc = Document(str(doc_id), title.strip(), body.strip(), tuple(tags_raw), metadata, embedding)
    if not doc.text.strip():
        raise InvalidDocument("empty text: 'title', 'body' and 'tags' are all empty")
    return doc


def known_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The document's fields this product reads; unknown ones never reach the queue."""
    return {key: raw[key] for key in FIELDS if key in raw}


def _embedding(raw: Any) -> tuple[float, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise InvalidDocument("'embedding' must be a non-empty list of numbers")
    try:
        values = tuple(float(x) for x in raw)
    except (TypeError, ValueError):
        raise InvalidDocument("'embedding' must contain only numbers") from None
    bad = [i for i, x in enumerate(values) if not math.isfinite(x)]
    if bad:
        raise InvalidDocument(f"'embedding' has NaN or infinite values (first at index {bad[0]})")
    if not any(values):
        raise InvalidDocument("'embedding' is all zeros: a cosine needs a direction")
    return values
