"""Waking the worker: the armed flag, and whether a table has unfolded events.

Writers call ``pg_notify`` only when their table's flag in
``audit_stream_wakeup`` is armed, and disarm it in the same statement (see the
event trigger in :mod:`audit_stream.triggers`). NOTIFY takes a cluster-wide
lock at commit; with a flag, one transaction per idle period pays it instead
of every transaction.

The fold re-arms the flag when it has caught up, then checks once more with
:func:`has_work`, so a writer that committed while the flag was down is not
left waiting. Whatever still slips through (a writer that checked the flag
just before it was re-armed and committed after that last check) is found by
the listener's poll within ``POLL_INTERVAL``.
"""

from __future__ import annotations

from django.db import DEFAULT_DB_ALIAS, connections

from audit_stream import config, tracking

__all__ = ["arm", "has_work", "tables_with_work"]

# Is any committed event not yet folded? Transactions visible in the
# checkpoint's snapshot are folded; older than its xmin, they all are.
_HAS_WORK_SQL = """
SELECT EXISTS (
    SELECT 1 FROM {table} AS e
    WHERE e.pgh_xid >= pg_snapshot_xmin(%(done)s::pg_snapshot)::text::bigint
      AND NOT pg_visible_in_snapshot(e.pgh_xid::text::xid8, %(done)s::pg_snapshot)
)
"""


def arm(event_table: str, *, using: str = DEFAULT_DB_ALIAS) -> None:
    """Ask the next writer of ``event_table`` to NOTIFY (on the configured channel)."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "INSERT INTO audit_stream_wakeup (event_table, channel, armed) VALUES (%s, %s, true)"
            " ON CONFLICT (event_table) DO UPDATE SET armed = true, channel = EXCLUDED.channel",
            [event_table, config.channel()],
        )


def disarm_all(*, using: str = DEFAULT_DB_ALIAS) -> None:
    """Stop all notifications (poll-only mode)."""
    with connections[using].cursor() as cursor:
        cursor.execute("UPDATE audit_stream_wakeup SET armed = false WHERE armed")


def has_work(event_table: str, *, using: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether ``event_table`` has committed events the fold has not taken yet."""
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT snapshot, target FROM audit_stream_checkpoint WHERE event_table = %s", [event_table]
        )
        row = cursor.fetchone()
        if row is None:
            done = "1:1:"  # never folded: every event is new
        elif row[1] is not None:
            return True  # an interval is half done
        else:
            done = row[0]
        cursor.execute(_HAS_WORK_SQL.format(table=connection.ops.quote_name(event_table)), {"done": done})
        return cursor.fetchone()[0]


def tables_with_work(*, using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """The event tables that have committed, unfolded events."""
    return [table for table in sorted(tracking._event_models) if has_work(table, using=using)]
