"""Offline evaluation on MovieLens: does the dynamic interest profile rank what users want next?

- ``data``: ratings and tags as events, a per-user time split, queries for held-out items.
- ``metrics``: NDCG@10, MRR, Recall@100, bootstrap intervals, paired tests (pure).
- ``run``: the protocol on the real pipeline and search layer; writes docs/evaluation.md.
"""
