"""Waking the worker: the wake-up flag, and whether a table has unfolded events.

Writers call ``pg_notify`` only when the worker is idle. The flag is the
``audit_stream_wakeup`` sequence: :func:`arm` sets it so that the next
``nextval`` returns 1; the event trigger notifies when it draws 1. Sequences
are not transactional, so the flag is tested and cleared at once and no
writer ever waits for another (a row flag would make every writer queue
behind the first one's transaction).

NOTIFY takes a cluster-wide lock at commit; with the flag, one transaction
per idle period pays it instead of every transaction.

The fold arms the flag when it has caught up, then checks once more with
:func:`has_work`. What can still slip through (a writer that drew its value
just before the flag was armed and committed after that last check, or a
first writer that rolled back) is found by the listener's poll within
``POLL_INTERVAL``.
"""

from __future__ import annotations

from django.db import DEFAULT_DB_ALIAS, connections

from audit_stream import tracking
from audit_stream.rowlog import DDL_LOG_TABLE, ROW_LOG_TABLE
from audit_stream.stream import unfolded
from audit_stream.stream.checkpoint import FOREIGN_SQL
from audit_stream.triggers import WAKEUP_SEQUENCE, quote_name

__all__ = ["arm", "disarm", "has_work", "tables_with_work"]

# Is any committed event not yet folded (audit_stream.stream.unfolded)? Two
# probes of the pgh_xid index, each stopping at the first committed row: the
# cost follows the rows of transactions still in flight, never the table. Each
# is a scalar subquery ordered by pgh_xid: an EXISTS would let the planner pick
# a sequential scan that expects to meet a match at once (it estimates a third
# of the table when the table has no statistics, as without autovacuum), and
# then reads every folded row first. After a restore, restored events whose
# old transaction ids look new to this cluster are skipped by the `floor` test
# (they are folded): until this cluster's ids pass theirs, a probe also reads
# those.
_HAS_WORK_SQL = f"""
SELECT (SELECT true FROM {{table}} AS e WHERE {unfolded.NEW} ORDER BY e.pgh_xid LIMIT 1) IS NOT NULL
    OR (SELECT true FROM {{table}} AS e WHERE {unfolded.IN_PROGRESS} ORDER BY e.pgh_xid LIMIT 1) IS NOT NULL
"""

ARM_SQL = f"SELECT setval('{WAKEUP_SEQUENCE}', 1, false)"
DISARM_SQL = f"SELECT setval('{WAKEUP_SEQUENCE}', 2, false)"


def arm(*, using: str = DEFAULT_DB_ALIAS) -> None:
    """Ask the next writer to NOTIFY."""
    with connections[using].cursor() as cursor:
        cursor.execute(ARM_SQL)


def disarm(*, using: str = DEFAULT_DB_ALIAS) -> None:
    """Stop notifications (poll-only mode)."""
    with connections[using].cursor() as cursor:
        cursor.execute(DISARM_SQL)


def is_armed(*, using: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether the next writer will NOTIFY."""
    with connections[using].cursor() as cursor:
        cursor.execute(f"SELECT last_value = 1 AND NOT is_called FROM {WAKEUP_SEQUENCE}")
        return cursor.fetchone()[0]


def has_work(event_table: str, *, using: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether ``event_table`` has committed events the fold has not taken yet."""
    with connections[using].cursor() as cursor:
        return _has_work(cursor, event_table)


def _has_work(cursor, event_table: str) -> bool:
    """:func:`has_work` on any DB-API cursor (the listener's own connection too)."""
    cursor.execute(
        f"SELECT c.snapshot, c.target, c.floor, {FOREIGN_SQL} FROM audit_stream_checkpoint AS c"
        " WHERE c.event_table = %s",
        [event_table],
    )
    row = cursor.fetchone()
    if row is not None and (row[1] is not None or row[3]):
        return True  # an interval is half folded, or a restore is to be recovered
    done, floor = (row[0], row[2]) if row is not None else ("1:1:", 0)  # never folded: every event is new
    # The row log's stream also carries the DDL log (a schema-only transaction writes only there).
    tables = [event_table, DDL_LOG_TABLE] if event_table == ROW_LOG_TABLE else [event_table]
    for table in tables:
        cursor.execute(_HAS_WORK_SQL.format(table=quote_name(table)), {"done": done, "floor": floor})
        if cursor.fetchone()[0]:
            return True
    return False


def tables_with_work(*, using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """The event tables that have committed, unfolded events."""
    with connections[using].cursor() as cursor:
        return [table for table in tracking.stream_tables() if _has_work(cursor, table)]
