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

from collections.abc import Collection

from django.db import DEFAULT_DB_ALIAS, connections

from audit_stream import registry
from audit_stream.rowlog import DDL_LOG_TABLE, ROW_LOG_TABLE
from audit_stream.stream import lanes, unfolded
from audit_stream.stream.checkpoint import FOREIGN_SQL
from audit_stream.triggers import WAKEUP_SEQUENCE, quote_name

__all__ = ["arm", "disarm", "has_work", "lanes_of", "lanes_with_work", "tables_with_work"]

# Is any committed event not yet folded (audit_stream.stream.unfolded)? Two
# probes of the pgh_xid index, each stopping at the first committed row: the
# cost follows the rows of transactions still in flight, never the table. Each
# is a scalar subquery ordered by pgh_xid: an EXISTS would let the planner pick
# a sequential scan that expects to meet a match at once (it estimates a third
# of the table when the table has no statistics, as without autovacuum), and
# then reads every folded row first. After a restore, restored events whose
# old transaction ids look new to this cluster are skipped by the `floor` test
# (they are folded): until this cluster's ids pass theirs, a probe also reads
# those. For a lane of a table folded in several (audit_stream.stream.lanes),
# only the lane's events count: a probe reads on past other lanes' unfolded
# events (about lanes - 1 of them before each match).
_HAS_WORK_SQL = f"""
SELECT (SELECT true FROM {{table}} AS e WHERE {unfolded.NEW} AND {{in_lane}}
        ORDER BY e.pgh_xid LIMIT 1) IS NOT NULL
    OR (SELECT true FROM {{table}} AS e WHERE {unfolded.IN_PROGRESS} AND {{in_lane}}
        ORDER BY e.pgh_xid LIMIT 1) IS NOT NULL
"""

# Each lane's checkpoint: where its work starts.
_LANES_SQL = f"""
SELECT c.lane, c.lanes, c.snapshot, c.target, c.floor, {FOREIGN_SQL}
FROM audit_stream_checkpoint AS c
WHERE c.event_table = %(table)s AND (%(lane)s::int IS NULL OR c.lane = %(lane)s)
ORDER BY c.lane
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


def has_work(event_table: str, *, lane: int | None = None, using: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether ``event_table`` (only its lane ``lane``, if given) has committed events the fold has
    not taken yet."""
    with connections[using].cursor() as cursor:
        return bool(_lanes_with_work(cursor, event_table, lane))


def lanes_of(event_table: str, among: Collection[int], *, using: str = DEFAULT_DB_ALIAS) -> list[int]:
    """The lanes of ``among`` where ``event_table`` has committed events the fold has not taken yet
    (lane 0 for a table folded in one lane): one probe per lane."""
    with connections[using].cursor() as cursor:
        found = _lanes_with_work(cursor, event_table, among=among)
    return [0 if lane is None else lane for lane in found]


def _has_work(cursor, event_table: str) -> bool:
    """:func:`has_work` on any DB-API cursor (the listener's own connection too)."""
    return bool(_lanes_with_work(cursor, event_table))


def _lanes_with_work(
    cursor, event_table: str, lane: int | None = None, among: Collection[int] | None = None
) -> list[int | None]:
    """The lanes of ``event_table`` with work, as fold tasks take them: ``[None]`` (the whole table)
    for a table folded in one lane, else the numbers of its lanes with work. Only lane ``lane``, or
    the lanes ``among``, when given.

    A table whose checkpoint records another number of lanes than ``FOLD_LANES``
    gives has work in each configured lane: its first fold re-lanes it.
    """
    wanted = lanes.configured(event_table)
    cursor.execute(_LANES_SQL, {"table": event_table, "lane": lane})
    rows = cursor.fetchall()
    if rows and rows[0][1] != wanted:
        if lane is not None:
            return [lane]
        if among is not None:
            return [each for each in range(wanted) if each in among]
        return [None] if wanted == 1 else list(range(wanted))
    if not rows:  # never folded: every event is new
        if lane is not None and lane >= wanted:
            return []
        each_lane = range(wanted) if lane is None else [lane]
        rows = [(each, wanted, "1:1:", None, 0, False) for each in each_lane]
    if among is not None:
        rows = [row for row in rows if row[0] in among]
    found = []
    sql = _HAS_WORK_SQL.format(
        table=quote_name(event_table), in_lane=lanes.in_lane(registry.event_models.get(event_table))
    )
    for each, count, done, target, floor, foreign in rows:
        if target is None and not foreign and not _probe(cursor, event_table, sql, done, floor, each, count):
            continue
        # (else an interval is half folded, or a restore is to be recovered)
        found.append(None if count == 1 else each)
    return found


def _probe(cursor, event_table: str, sql: str, done: str, floor: int, lane: int, count: int) -> bool:
    """Whether lane ``lane`` of ``count`` has unfolded events past ``done``.

    The row log's stream also carries the DDL log (a schema-only transaction
    writes only there); the row log always has one lane.
    """
    if event_table == ROW_LOG_TABLE:
        sqls = [sql, _HAS_WORK_SQL.format(table=quote_name(DDL_LOG_TABLE), in_lane=lanes.in_lane(None))]
    else:
        sqls = [sql]
    for each in sqls:
        cursor.execute(each, {"done": done, "floor": floor, **lanes.params(lane, count)})
        if cursor.fetchone()[0]:
            return True
    return False


def lanes_with_work(*, using: str = DEFAULT_DB_ALIAS) -> list[tuple[str, int | None]]:
    """The (event table, lane) pairs with committed, unfolded events, one fold task each.

    The lane is None for a table folded in one lane (its task folds the whole table).
    """
    with connections[using].cursor() as cursor:
        return all_lanes_with_work(cursor)


def all_lanes_with_work(cursor) -> list[tuple[str, int | None]]:
    """:func:`lanes_with_work` on any DB-API cursor (the listener's own connection too)."""
    return [(table, lane) for table in registry.stream_tables() for lane in _lanes_with_work(cursor, table)]


def tables_with_work(*, using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """The event tables that have committed, unfolded events."""
    return sorted({table for table, _ in lanes_with_work(using=using)})
