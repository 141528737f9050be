"""Indexed documents' vectors and tags, as folds need them: read in real time, cached per
process for the current behaviour training (a new one empties every process's cache at its
next fetch; the cache's TTL bounds how stale a re-indexed document's vectors can be)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from plugin.caches import behaviour_version_key
from plugin.interest import DocVector
from plugin.services import Services


def fetch_doc_vectors(services: Services, doc_ids: Iterable[str],
                      fresh: bool = False) -> dict[str, DocVector]:
    """Vectors and tags of indexed documents (from this process's cache unless ``fresh``)."""
    wanted = set(doc_ids)
    version = services.redis.get(behaviour_version_key(services.settings))
    found: dict[str, DocVector] = ({} if fresh else
                                   services.doc_vectors.get_many_at(version, wanted))
    ids = sorted(wanted - set(found))
    fetched: dict[str, DocVector] = {}
    # mget is real-time: a document is visible as soon as its bulk request returned. The
    # whole source: picking fields out costs the engine more than sending it as stored.
    for doc_id, src in services.engine.mget_sources(services.settings.docs_alias, ids).items():
        if "embedding" not in src:
            continue
        behaviour = src.get("behaviour")
        # Arrays once here, not a list converted at every fold.
        fetched[doc_id] = DocVector(
            np.asarray(src["embedding"], dtype=np.float64), tuple(src.get("tags") or ()),
            None if behaviour is None else np.asarray(behaviour, dtype=np.float64),
            src.get("behaviour_version"))
    services.doc_vectors.put_many_at(version, fetched)
    return {**found, **fetched}
