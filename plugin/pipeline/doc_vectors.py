"""Indexed documents' vectors and tags, as folds need them: read in real time, cached per
process (the cache's TTL bounds how stale a retrained behaviour vector can be)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from plugin.interest import DocVector
from plugin.services import Services


def fetch_doc_vectors(services: Services, doc_ids: Iterable[str],
                      fresh: bool = False) -> dict[str, DocVector]:
    """Vectors and tags of indexed documents (from this process's cache unless ``fresh``)."""
    wanted = set(doc_ids)
    found: dict[str, DocVector] = {} if fresh else services.doc_vectors.get_many(wanted)
    ids = sorted(wanted - set(found))
    client = services.engine.client
    for start in range(0, len(ids), 1000):
        # mget is real-time: a document is visible as soon as its bulk request returned.
        # The whole source: picking fields out makes the engine parse the vectors' floats
        # and write them again, six times the CPU of sending the stored bytes as they are.
        response = client.mget(index=services.settings.docs_alias,
                               body={"ids": ids[start:start + 1000]})
        for doc in response["docs"]:
            if doc.get("found") and "embedding" in doc.get("_source", {}):
                src = doc["_source"]
                behaviour = src.get("behaviour")
                # Arrays once here, not a list converted at every fold (a tenth of a fold).
                found[doc["_id"]] = vector = DocVector(
                    np.asarray(src["embedding"], dtype=np.float64),
                    tuple(src.get("tags") or ()),
                    None if behaviour is None else np.asarray(behaviour, dtype=np.float64),
                    src.get("behaviour_version"))
                services.doc_vectors.put(doc["_id"], vector)
    return found
