"""Messages owed to sinks for new changes, written by the fold in its own transaction.

The sibling of :mod:`audit_stream.webhooks.messages`: the same INSERT
(:mod:`audit_stream.outbox`), hence the same payload and filters.
"""

from __future__ import annotations

from audit_stream import outbox

__all__ = ["record"]

_RECORD_SQL = outbox.record_sql("audit_stream_sinkmessage", "sink_id", "audit_stream_sink")


def record(cursor, change_ids: list[int]) -> set[int]:
    """Record the sink messages owed for ``change_ids``; return the sinks that got some."""
    return outbox.record(cursor, change_ids, sql=_RECORD_SQL, subscribers="audit_stream_sink")
