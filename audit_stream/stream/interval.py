"""Where a fold interval starts and ends: its ``target`` snapshot, its highest id, its first event.

A fold interval (:mod:`audit_stream.stream.fold`) is every event committed
between the checkpoint's ``done`` snapshot and a ``target`` taken when the
interval starts (:func:`take_target`). Its batches walk the primary key from
just below its lowest id (:func:`first_position`), and past an empty window
jump to just below its next id (:func:`next_position`): both found through
the ``pgh_xid`` index, so gaps of other transactions' or lanes' ids cost no
reading.
"""

from __future__ import annotations

from audit_stream import rowlog
from audit_stream.stream import unfolded

__all__ = ["first_position", "next_position", "stream_tables", "take_target"]

# The lowest pgh_id of an interval, found through the pgh_xid index: one
# range for the transactions that started after `done`, one list for those
# in progress then. `+ 0` keeps the planner from answering min() by walking
# the primary key from the table's first row and testing each. `above`: past
# an empty window of a batch, the interval's next id after it.
_FIRST_ID_SQL = f"""
SELECT least(
    (SELECT min(e.pgh_id + 0) FROM {{table}} AS e
     WHERE {unfolded.NEW}
       AND e.pgh_xid < pg_snapshot_xmax(%(target)s::pg_snapshot)::text::bigint
       AND pg_visible_in_snapshot(e.pgh_xid::text::xid8, %(target)s::pg_snapshot)
       AND e.pgh_id + 0 > %(above)s),
    (SELECT min(e.pgh_id + 0) FROM {{table}} AS e
     WHERE {unfolded.IN_PROGRESS}
       AND pg_visible_in_snapshot(e.pgh_xid::text::xid8, %(target)s::pg_snapshot)
       AND e.pgh_id + 0 > %(above)s)
)
"""


def stream_tables(table: str) -> list[str]:
    """The tables one stream reads: the event table; the row log's also carries the DDL log
    (whose ids come from the same sequence)."""
    return [table, rowlog.DDL_LOG_TABLE] if table == rowlog.ROW_LOG_TABLE else [table]


def take_target(cursor, connection, table: str) -> tuple[str, int | None]:
    """A new interval's ``target`` snapshot, and ``high``: every event committed in it has an id
    up to it (for a recovery)."""
    quoted = [connection.ops.quote_name(t) for t in stream_tables(table)]
    highest = ", ".join(f"(SELECT max(pgh_id) FROM {q})" for q in quoted)
    cursor.execute(f"SELECT pg_current_snapshot()::text, greatest({highest})")
    return cursor.fetchone()


def first_position(
    cursor, connection, table: str, done: str, target: str, floor: int, above: int = 0
) -> int | None:
    """Just below the lowest pgh_id of the interval from ``done`` to ``target`` past ``above``, any lane
    (None: nothing there)."""
    quoted = [connection.ops.quote_name(t) for t in stream_tables(table)]
    firsts = [_first_id(cursor, q, done, target, floor, above) for q in quoted]
    return min((f for f in firsts if f is not None), default=None)


def next_position(cursor, connection, table: str, interval: dict) -> int | None:
    """Past an empty window: just below the interval's next id after it (None: the interval is done)."""
    return first_position(
        cursor,
        connection,
        table,
        interval["done"],
        interval["target"],
        interval["floor"],
        interval["window_end"],
    )


def _first_id(cursor, quoted_table: str, done: str, target: str, floor: int, above: int = 0) -> int | None:
    """Just below the lowest pgh_id (above ``above``) of the interval from ``done`` to ``target``.

    None: the interval has no event there.
    """
    params = {"done": done, "target": target, "floor": floor, "above": above}
    cursor.execute(_FIRST_ID_SQL.format(table=quoted_table), params)
    first = cursor.fetchone()[0]
    return None if first is None else first - 1
