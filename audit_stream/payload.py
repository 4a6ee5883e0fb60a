"""The feed format: the JSON payload of one change, as webhooks (and sinks) send it.

Built by PostgreSQL from the ``Change`` row, so numbers keep every digit and
every delivery of a message sends the same bytes. Every key is described in
``docs/feed.md``; the shape follows Standard Webhooks (``type``,
``timestamp``, ``data``).

``data.transaction`` tells a consumer which transaction wrote the change and
how many changes that transaction made across every tracked table (event
tables, the row log and the DDL log), so it knows when it holds all of them.
The count is taken when the change is folded, from the event tables'
``pgh_xid`` indexes: the transaction has committed by then, so every one of
its events is there, and the write path does no extra work for it.
"""

from __future__ import annotations

from audit_stream import registry
from audit_stream.triggers import quote_name

__all__ = ["FROM_SQL", "PAYLOAD_SQL", "TYPE_SQL", "matches", "transaction_sizes"]

#: The payload's ``type`` (and the message's event type): "<app_label>.<model>.<label>".
TYPE_SQL = "c.model || '.' || c.label"

#: The payload of the change ``c`` (audit_stream_change), with its context ``ctx`` and
#: its transaction's size ``tx`` (see FROM_SQL).
PAYLOAD_SQL = f"""
jsonb_build_object(
    'type', {TYPE_SQL},
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
                   ELSE jsonb_build_object('id', c.context_id, 'metadata', ctx.metadata) END,
        'transaction', CASE WHEN c.transaction_id IS NULL THEN NULL
                       ELSE jsonb_build_object('id', c.transaction_id, 'changes', tx.changes,
                                               'command', c.command_id) END
    )
)"""


def matches(alias: str) -> str:
    """SQL: the subscriber ``alias`` (a webhook endpoint or a sink) is active and takes change ``c``.

    Backfill changes (``manage.py backfill_history``) go only to subscribers
    whose label filter names ``"backfill"``: an empty filter means every real change.
    """
    return (
        f"({alias}.is_active"
        f" AND (cardinality({alias}.filter_models) = 0 OR c.model = ANY({alias}.filter_models))"
        f" AND ((cardinality({alias}.filter_labels) = 0 AND c.label <> 'backfill')"
        f" OR c.label = ANY({alias}.filter_labels)))"
    )


#: What PAYLOAD_SQL reads besides ``c``: bind ``xids`` and ``sizes`` from transaction_sizes().
FROM_SQL = """
LEFT JOIN audit_stream_context AS ctx ON ctx.id = c.context_id
LEFT JOIN unnest(%(xids)s::bigint[], %(sizes)s::bigint[]) AS tx (id, changes) ON tx.id = c.transaction_id"""

# How many events each transaction wrote to one stream table. The range
# condition lets the table's BRIN index on pgh_xid read only the recent pages
# (BRIN cannot use `= ANY` alone); a batch's transactions are close together.
_SIZES_BRANCH = """SELECT e.pgh_xid, count(*) AS n FROM {table} AS e
WHERE e.pgh_xid BETWEEN %(low)s AND %(high)s AND e.pgh_xid = ANY(%(xids)s::bigint[])
GROUP BY e.pgh_xid"""

# The transactions of some changes.
_XIDS_SQL = """SELECT array_agg(DISTINCT c.transaction_id) FROM audit_stream_change AS c
WHERE c.id = ANY(%(change_ids)s::bigint[]) AND c.transaction_id IS NOT NULL"""


def _tables() -> list[str]:
    return [*registry.stream_tables(), registry.DDL_LOG_TABLE]


def transaction_sizes(cursor, change_ids: list[int]) -> dict[str, list[int]]:
    """``{"xids": [...], "sizes": [...]}``: the changes each transaction of ``change_ids`` made, in total.

    Counted over every stream table (one grouped, index-served query each);
    bind the result into :data:`FROM_SQL`.
    """
    cursor.execute(_XIDS_SQL, {"change_ids": change_ids})
    xids = cursor.fetchone()[0] or []
    if not xids:
        return {"xids": [], "sizes": []}
    branches = " UNION ALL ".join(_SIZES_BRANCH.format(table=quote_name(t)) for t in _tables())
    cursor.execute(
        f"SELECT s.pgh_xid, sum(s.n)::bigint FROM ({branches}) AS s GROUP BY s.pgh_xid",
        {"low": min(xids), "high": max(xids), "xids": xids},
    )
    sizes = dict(cursor.fetchall())
    return {"xids": list(sizes), "sizes": list(sizes.values())}
