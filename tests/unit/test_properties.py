"""Property-based tests of the parsers: any input gets a result or that parser's own error,
never another exception (which would become a 500 or a lost batch)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from plugin.api.proxy_policy import TOP_LEVEL, RefusedBody, check_body
from plugin.config import DEFAULT_EVENT_WEIGHTS
from plugin.documents import InvalidDocument, parse_document
from plugin.events import InvalidEvent, parse_event
from plugin.storable import MAX_ID_BYTES

# Text with lone surrogates and other code points JSON can carry.
TEXT = st.text(alphabet=st.characters(), max_size=40) | st.sampled_from(["\ud800", "é" * 300])
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
           | TEXT)
JSONISH = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)


def _event_like() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={
        "event_id": SCALARS, "user_id": SCALARS, "doc_id": SCALARS,
        "type": st.sampled_from([*DEFAULT_EVENT_WEIGHTS, "teleport"]) | SCALARS,
        "weight": SCALARS, "timestamp": SCALARS, "text": SCALARS, "dwell_s": SCALARS,
    })


@settings(max_examples=400, deadline=None)
@given(_event_like())
def test_parse_event_accepts_or_names_the_problem(raw: dict[str, Any]) -> None:
    try:
        event = parse_event(raw, DEFAULT_EVENT_WEIGHTS, now=1_700_000_000.0)
    except InvalidEvent:
        return
    # What passes is storable: ids within the engine's limits, valid Unicode, bounded weight.
    for value in (event.event_id, event.user_id, event.doc_id or "", event.text or ""):
        value.encode("utf-8")
    assert len(event.user_id.encode()) <= MAX_ID_BYTES
    assert len(event.event_id.encode()) <= MAX_ID_BYTES
    assert abs(event.weight) <= 1000 * 3


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    "id": SCALARS, "title": SCALARS, "body": SCALARS, "tags": JSONISH, "metadata": JSONISH,
    "embedding": st.lists(st.floats(allow_nan=True), max_size=4) | SCALARS}))
def test_parse_document_accepts_or_names_the_problem(raw: dict[str, Any]) -> None:
    try:
        doc = parse_document(raw)
    except InvalidDocument:
        return
    assert len(doc.doc_id.encode("utf-8")) <= MAX_ID_BYTES
    doc.text.encode("utf-8")


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["query", "aggs", "knn", "size", "from", "sort",
                                        "post_filter", "other"]), JSONISH, max_size=4))
def test_proxy_policy_accepts_or_refuses(body: dict[str, Any]) -> None:
    try:
        check_body(body, 1000)
    except RefusedBody as exc:
        assert str(exc)  # the refusal says why
        return
    assert set(body) <= TOP_LEVEL
