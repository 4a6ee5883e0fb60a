"""Messages for new changes, written by the fold in its own transaction.

A change and its messages commit together: if the fold rolls back, neither
exists; if it commits, every active endpoint whose filters match owes a
message. The payload is the feed format (:mod:`audit_stream.payload`); the
INSERT is the one every subscriber shares (:mod:`audit_stream.outbox`).
"""

from __future__ import annotations

from audit_stream import outbox

__all__ = ["record"]

_RECORD_SQL = outbox.record_sql("audit_stream_webhookmessage", "endpoint_id", "audit_stream_webhookendpoint")


def record(cursor, change_ids: list[int]) -> set[int]:
    """Record the messages owed for ``change_ids``; return the endpoints that got some."""
    return outbox.record(cursor, change_ids, sql=_RECORD_SQL, subscribers="audit_stream_webhookendpoint")
