"""Co-interaction pairs and their batches for fine-tuning the language model (pure parts)."""

from __future__ import annotations

from plugin.fine_tuning import batches, co_interaction_pairs


def test_pairs_are_documents_one_user_liked_close_in_time_each_once() -> None:
    sequences = {"u1": ["a", "b", "c", "d"], "u2": ["b", "a", "e"]}
    pairs = co_interaction_pairs(sequences, window=2)
    assert sorted(pairs) == [("a", "b"), ("a", "c"), ("a", "e"), ("b", "c"), ("b", "d"),
                             ("b", "e"), ("c", "d")]
    assert len(co_interaction_pairs(sequences, window=2, limit=3)) == 3
    assert co_interaction_pairs(sequences, window=2, seed=1) != pairs or len(pairs) < 2
    assert co_interaction_pairs({"u": ["a", "a"]}) == []


def test_batches_hold_every_pair_once_and_no_document_twice() -> None:
    pairs = co_interaction_pairs({f"u{u}": [f"d{(u * 7 + i) % 40}" for i in range(12)]
                                  for u in range(30)})
    planned = batches(pairs, 8)
    assert sorted(p for b in planned for p in b) == sorted(pairs)
    for batch in planned:
        docs = [d for pair in batch for d in pair]
        assert len(docs) == len(set(docs)) and len(batch) <= 8
    assert sum(len(b) == 8 for b in planned) > len(planned) / 2  # mostly full
