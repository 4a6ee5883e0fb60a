"""Messages owed to sinks for new changes, written by the fold in its own transaction.

The sibling of :mod:`audit_stream.webhooks.messages`, with the same payload
(:data:`~audit_stream.webhooks.messages.PAYLOAD_SQL`) and the same filters.
"""

from __future__ import annotations

from audit_stream.webhooks.messages import PAYLOAD_SQL, matches

__all__ = ["record"]

# For the changes just folded, one message per matching active sink.
_RECORD_SQL = f"""
INSERT INTO audit_stream_sinkmessage
    (id, sink_id, change_id, event_type, payload, status, attempts, next_attempt_at,
     last_error, created_at)
SELECT gen_random_uuid(), s.id, c.id,
       c.model || '.' || c.label,
       {PAYLOAD_SQL},
       'pending', 0, now(), '', now()
FROM audit_stream_change AS c
JOIN audit_stream_sink AS s ON {matches("s")}
LEFT JOIN audit_stream_context AS ctx ON ctx.id = c.context_id
WHERE c.id = ANY(%(change_ids)s::bigint[])
ORDER BY c.id, s.id
RETURNING sink_id
"""


def record(cursor, change_ids: list[int]) -> set[int]:
    """Record the sink messages owed for ``change_ids``; return the sinks that got some."""
    if not change_ids:
        return set()
    cursor.execute(_RECORD_SQL, {"change_ids": change_ids})
    return {row[0] for row in cursor.fetchall()}
