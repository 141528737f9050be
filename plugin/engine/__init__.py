"""Every difference between Elasticsearch and OpenSearch lives in this package, and nowhere else.

The rest of the code asks an :class:`Engine` for a vector field mapping, a kNN clause, the
Painless cosine expression, a bulk write or a read, and never checks which engine it talks to.
``connect`` asks the server what it is and returns an :class:`ElasticsearchEngine` or an
:class:`OpenSearchEngine`; ``base`` holds what both share.
"""

from plugin.engine.base import (
    BUSY_STATUSES,
    JSON,
    BulkItem,
    BulkOutcome,
    Engine,
    EngineBusy,
    EngineError,
    EngineKind,
    deadline,
)
from plugin.engine.connection import connect, transient_errors
from plugin.engine.elasticsearch import ElasticsearchEngine
from plugin.engine.opensearch import OpenSearchEngine

__all__ = [
    "BUSY_STATUSES",
    "JSON",
    "BulkItem",
    "BulkOutcome",
    "ElasticsearchEngine",
    "Engine",
    "EngineBusy",
    "EngineError",
    "EngineKind",
    "OpenSearchEngine",
    "connect",
    "deadline",
    "transient_errors",
]
