"""A bulk request's answers sorted by what the caller does next (plugin/engine/base.py)."""

from __future__ import annotations

from typing import Any

import pytest

from plugin.engine import BulkOutcome, EngineBusy


def _answer(op: str, doc_id: str, status: int, error: Any = None) -> dict[str, Any]:
    info: dict[str, Any] = {"_id": doc_id, "status": status}
    if error is not None:
        info["error"] = error
    return {op: info}


def test_each_answer_lands_in_its_place() -> None:
    outcome = BulkOutcome()
    for ok, item in [(True, _answer("index", "a", 201)),
                     (False, _answer("create", "b", 409, {"type": "version_conflict",
                                                         "reason": "exists"})),
                     (False, _answer("update", "c", 404, {"type": "document_missing",
                                                         "reason": "gone"})),
                     (False, _answer("index", "d", 429, {"type": "es_rejected",
                                                        "reason": "queue full"})),
                     (False, _answer("index", "e", 400, "mapper_parsing_exception"))]:
        outcome.add(ok, item)
    assert [(i.op, i.id) for i in outcome.written] == [("index", "a")]
    assert [i.id for i in outcome.conflicts] == ["b"]
    assert [i.id for i in outcome.missing] == ["c"]
    assert [i.id for i in outcome.busy] == ["d"]
    assert [i.reason for i in outcome.failed] == ["mapper_parsing_exception"]
    assert outcome.conflicts[0].reason == "version_conflict: exists"
    # Refusals for load come first: the task is retried rather than failed.
    with pytest.raises(EngineBusy, match="1 writes: es_rejected: queue full"):
        outcome.raise_if_refused("writes", handled=[409, 404])


@pytest.mark.parametrize(("handled", "raises"), [((), True), ((409,), True),
                                                 ((409, 404), False)])
def test_only_what_the_caller_handles_is_let_through(handled: tuple[int, ...],
                                                     raises: bool) -> None:
    outcome = BulkOutcome()
    outcome.add(False, _answer("update", "a", 409, {"type": "conflict", "reason": ""}))
    outcome.add(False, _answer("update", "b", 404, {"type": "missing", "reason": ""}))
    if raises:
        with pytest.raises(RuntimeError):
            outcome.raise_if_refused("writes", handled=handled)
    else:
        outcome.raise_if_refused("writes", handled=handled)
    outcome.raise_if_busy("writes")  # nothing was refused for load
