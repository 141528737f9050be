"""What the workers do, as plain functions of (services, batch) -> report.

- ``documents``: embed and index documents, then apply events that were waiting for them.
- ``events``: validate, deduplicate, store, fold into users, and the events' bookkeeping
  (statuses, when each was applied).
- ``users``: the per-user read-fold-write with optimistic concurrency, rebuilds, erasure.
- ``doc_vectors``: indexed documents' vectors and tags, as folds need them.
- ``popularity``, ``behaviour``: documents' decayed popularity; learned behaviour vectors.
"""

from plugin.pipeline.documents import index_documents
from plugin.pipeline.events import ingest_event_batches, ingest_events
from plugin.pipeline.report import BatchReport
from plugin.pipeline.users import (
    ConcurrentUpdateError,
    EventsInFlight,
    all_user_ids,
    erase_user,
    rebuild_all,
    rebuild_user,
    rebuild_users,
    user_batches,
)

__all__ = [
    "BatchReport",
    "ConcurrentUpdateError",
    "EventsInFlight",
    "all_user_ids",
    "erase_user",
    "index_documents",
    "ingest_event_batches",
    "ingest_events",
    "rebuild_all",
    "rebuild_user",
    "rebuild_users",
    "user_batches",
]
