"""Messages for new changes, written by the fold in its own transaction.

A change and its messages commit together: if the fold rolls back, neither
exists; if it commits, every active endpoint whose filters match owes a
message. The payload follows the Standard Webhooks structure.
"""

from __future__ import annotations

__all__ = ["PAYLOAD_SQL", "matches", "record"]

# The payload of change `c` (with its context `ctx` LEFT JOINed), shared by every
# kind of delivery (webhook endpoints and sinks) so the JSON is one and the same.
PAYLOAD_SQL = """
       jsonb_build_object(
           'type', c.model || '.' || c.label,
           'timestamp', to_char(c.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
           'data', jsonb_build_object(
               'model', c.model,
               'object_id', c.object_id,
               'label', c.label,
               'event_table', c.event_table,
               'event_id', c.event_id,
               'diff', c.diff,
               'snapshot', c.snapshot,
               'context', CASE WHEN c.context_id IS NULL THEN NULL
                          ELSE jsonb_build_object('id', c.context_id, 'metadata', ctx.metadata) END
           )
       )
"""


def matches(alias: str) -> str:
    """SQL: the subscriber ``alias`` (an endpoint or a sink) is active and its filters match change ``c``."""
    return (
        f"({alias}.is_active"
        f" AND (cardinality({alias}.filter_models) = 0 OR c.model = ANY({alias}.filter_models))"
        f" AND (cardinality({alias}.filter_labels) = 0 OR c.label = ANY({alias}.filter_labels)))"
    )


# For the changes just folded, one message per matching active endpoint.
# data.event_id (pgh_id) grows per object in the order changes happened: a
# receiver re-orders or drops stale deliveries with it.
_RECORD_SQL = f"""
INSERT INTO audit_stream_webhookmessage
    (id, endpoint_id, change_id, event_type, payload, status, attempts, next_attempt_at,
     last_error, created_at)
SELECT gen_random_uuid(), ep.id, c.id,
       c.model || '.' || c.label,
       {PAYLOAD_SQL},
       'pending', 0, now(), '', now()
FROM audit_stream_change AS c
JOIN audit_stream_webhookendpoint AS ep ON {matches("ep")}
LEFT JOIN audit_stream_context AS ctx ON ctx.id = c.context_id
WHERE c.id = ANY(%(change_ids)s::bigint[])
ORDER BY c.id, ep.id
RETURNING endpoint_id
"""


def record(cursor, change_ids: list[int]) -> set[int]:
    """Record the messages owed for ``change_ids``; return the endpoints that got some."""
    if not change_ids:
        return set()
    cursor.execute(_RECORD_SQL, {"change_ids": change_ids})
    return {row[0] for row in cursor.fetchall()}
