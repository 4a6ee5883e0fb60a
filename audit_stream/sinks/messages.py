"""Messages owed to sinks for new changes, written by the fold in its own transaction.

The sibling of :mod:`audit_stream.webhooks.messages`, with the same payload
(:data:`audit_stream.payload.PAYLOAD_SQL`) and the same filters (:func:`audit_stream.payload.matches`).
"""

from __future__ import annotations

from audit_stream import ordering, payload

__all__ = ["record"]

# For the changes just folded, one message per matching active sink (an ordered
# sink's messages carry their object's key: audit_stream.ordering).
_RECORD_SQL = f"""
INSERT INTO audit_stream_sinkmessage
    (id, sink_id, change_id, event_type, payload, status, attempts, next_attempt_at,
     last_error, created_at, object_key)
SELECT gen_random_uuid(), s.id, c.id, {payload.TYPE_SQL}, {payload.PAYLOAD_SQL},
       'pending', 0, now(), '', now(), {ordering.OBJECT_KEY_SQL.format(alias="s")}
FROM audit_stream_change AS c
JOIN audit_stream_sink AS s ON {payload.matches("s")}
{payload.FROM_SQL}
WHERE c.id = ANY(%(change_ids)s::bigint[])
ORDER BY c.id, s.id
RETURNING sink_id
"""


_ANY_SINK_SQL = "SELECT EXISTS (SELECT 1 FROM audit_stream_sink WHERE is_active)"


def record(cursor, change_ids: list[int]) -> set[int]:
    """Record the sink messages owed for ``change_ids``; return the sinks that got some."""
    if not change_ids:
        return set()
    cursor.execute(_ANY_SINK_SQL)
    if not cursor.fetchone()[0]:
        return set()
    sizes = payload.transaction_sizes(cursor, change_ids)
    cursor.execute(_RECORD_SQL, {"change_ids": change_ids, **sizes})
    return {row[0] for row in cursor.fetchall()}
