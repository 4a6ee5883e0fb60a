"""Messages for new changes, written by the fold in its own transaction.

A change and its messages commit together: if the fold rolls back, neither
exists; if it commits, every active endpoint whose filters match owes a
message. The payload is the feed format (:mod:`audit_stream.payload`).
"""

from __future__ import annotations

from audit_stream import ordering, payload

__all__ = ["record"]

# For the changes just folded, one message per matching active endpoint
# (payload.matches: the filters every subscriber kind shares).
# data.event_id (pgh_id) grows per object in the order changes happened: a
# receiver re-orders or drops stale deliveries with it. An ordered endpoint's
# messages carry their object's key (audit_stream.ordering).
_RECORD_SQL = f"""
INSERT INTO audit_stream_webhookmessage
    (id, endpoint_id, change_id, event_type, payload, status, attempts, next_attempt_at,
     last_error, created_at, object_key)
SELECT gen_random_uuid(), ep.id, c.id, {payload.TYPE_SQL}, {payload.PAYLOAD_SQL},
       'pending', 0, now(), '', now(), {ordering.OBJECT_KEY_SQL.format(alias="ep")}
FROM audit_stream_change AS c
JOIN audit_stream_webhookendpoint AS ep ON {payload.matches("ep")}
{payload.FROM_SQL}
WHERE c.id = ANY(%(change_ids)s::bigint[])
ORDER BY c.id, ep.id
RETURNING endpoint_id
"""

_ANY_ENDPOINT_SQL = "SELECT EXISTS (SELECT 1 FROM audit_stream_webhookendpoint WHERE is_active)"


def record(cursor, change_ids: list[int]) -> set[int]:
    """Record the messages owed for ``change_ids``; return the endpoints that got some."""
    if not change_ids:
        return set()
    cursor.execute(_ANY_ENDPOINT_SQL)
    if not cursor.fetchone()[0]:
        return set()  # nobody listens: no transaction sizes to count
    sizes = payload.transaction_sizes(cursor, change_ids)
    cursor.execute(_RECORD_SQL, {"change_ids": change_ids, **sizes})
    return {row[0] for row in cursor.fetchall()}
