"""Retention by partition: which of a table's oldest partitions may go, and dropping them.

:func:`droppable` names the lowest partitions whose events are all older
than a cutoff and all folded; :func:`replace_lowest` drops them, keeping the
rows a policy must keep, in one short swap (:func:`retry_on_lock_timeout`
retries it while writers hold the table). Detached partitions are dropped
after the detach's transaction (:func:`drop_detached`), marked so that a
prune interrupted in between leaves nothing for long (:func:`drop_leftovers`).
:mod:`audit_stream.retention` decides what to keep.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from django.db import DEFAULT_DB_ALIAS, OperationalError, connections, transaction

from audit_stream.partitions.layout import (
    FULL_BEFORE,
    Layout,
    Partition,
    partitions,
    suffixed,
    unique_indexes,
)
from audit_stream.stream import unfolded

__all__ = [
    "DETACHED",
    "aged",
    "drop_detached",
    "drop_leftovers",
    "droppable",
    "leftovers",
    "mark_detached",
    "replace_lowest",
    "retry_on_lock_timeout",
]

#: The comment on a partition a prune detached and has yet to drop, followed by its table's name.
#: The drop runs after the detach's transaction, outside any lock of the table (unlinking a
#: partition's files takes tens of milliseconds per gigabyte, which no writer should wait for);
#: a prune interrupted in between leaves the marked table, which the next one drops.
DETACHED = "audit_stream: detached for retention from "

# The tables an earlier prune of a table detached and did not drop: ordinary
# tables (no longer partitions) of the table's schema carrying the mark.
_LEFTOVERS_SQL = """
SELECT c.relname FROM pg_class AS c
WHERE c.relkind = 'r' AND NOT c.relispartition
  AND c.relnamespace = (
      SELECT t.relnamespace FROM pg_class AS t WHERE t.oid = to_regclass(quote_ident(%(table)s)))
  AND obj_description(c.oid, 'pg_class') = %(mark)s
ORDER BY c.relname
"""


# Does a partition hold an unfolded event? Two probes of its pgh_xid index, as
# audit_stream.stream.wakeup asks of a whole table (ordered, so the planner
# never reads the partition sequentially hoping to meet one early).
_HAS_UNFOLDED_SQL = f"""
SELECT (SELECT true FROM {{table}} AS e WHERE {unfolded.NEW} ORDER BY e.pgh_xid LIMIT 1) IS NOT NULL
    OR (SELECT true FROM {{table}} AS e WHERE {unfolded.IN_PROGRESS} ORDER BY e.pgh_xid LIMIT 1) IS NOT NULL
"""


def aged(cursor, table: str, cutoff: datetime) -> list[Partition]:
    """The lowest partitions, in a row, whose rows were all written before ``cutoff``.

    Written before: the partition was full (the sequence past its end) before
    ``cutoff``. Only the lowest in a row: retention never leaves a hole below
    newer history.
    """
    found = []
    for part in partitions(cursor, table):
        if part.default or part.full_before is None or part.full_before >= cutoff:
            break
        found.append(part)
    return found


def droppable(cursor, table: str, cutoff: datetime, done: str | None, floor: int) -> list[Partition]:
    """The partitions retention may drop: every event created before ``cutoff``, and folded.

    Created before: :func:`aged`. Folded: none of its events is unfolded (the
    fold's own definition, audit_stream.stream.unfolded), probed through the
    pgh_xid index. Only the lowest partitions in a row: a partition is kept,
    and every later one, once one must stay.
    """
    if done is None:
        return []
    found = []
    quote = cursor.db.ops.quote_name
    for part in aged(cursor, table, cutoff):
        cursor.execute(_HAS_UNFOLDED_SQL.format(table=quote(part.name)), {"done": done, "floor": floor})
        if cursor.fetchone()[0]:
            break
        found.append(part)
    return found


def replace_lowest(
    layout: Layout,
    parts: list[Partition],
    keep: str,
    *,
    using: str = DEFAULT_DB_ALIAS,
    lock_timeout: str = "100ms",
    attempts: int = 50,
) -> tuple[int, int]:
    """Drop the lowest partitions ``parts``, keeping their rows that ``keep`` selects; (dropped, kept) rows.

    ``keep`` is a condition on a row ``c`` of the whole table (it may look at
    later partitions). The kept rows are copied first, without a lock on the
    table, into a new table with the table's indexes and a check of the range
    (so attaching it reads nothing); then one short transaction, which gives
    up after ``lock_timeout`` (the caller retries: ``LockNotAvailable``),
    (retried ``attempts`` times) detaches and drops ``parts`` and attaches the new table in their place:
    ids from the lowest up to the end of the last of ``parts``, with the last
    one's time bound. Readers see the rows before or after, never without the
    kept ones. The caller keeps other deleters of ``parts`` away meanwhile (a
    row deleted after the copy would come back with it).
    """
    connection = connections[using]
    quote, table, column = connection.ops.quote_name, layout.table, layout.column
    upper = parts[-1].upper
    with connection.cursor() as cursor:
        kept = _free_name(cursor, quote, f"{table}_k{upper}")
        cursor.execute(
            f"CREATE TABLE {quote(kept)} (LIKE {quote(table)} INCLUDING DEFAULTS INCLUDING STORAGE,"
            f" CHECK ({quote(column)} IS NOT NULL AND {quote(column)} < {int(upper)}))"
        )
        cursor.execute(
            f"INSERT INTO {quote(kept)} SELECT * FROM {quote(table)} AS c"
            f" WHERE c.{quote(column)} < %s AND ({keep})",
            [upper],
        )
        kept_rows = cursor.rowcount
        cursor.execute(f"ALTER TABLE {quote(kept)} ADD PRIMARY KEY ({quote(column)})")
        # The table's indexes (attached, not rebuilt, by ATTACH PARTITION below).
        cursor.execute(
            "SELECT substr(pg_get_indexdef(x.indexrelid), strpos(pg_get_indexdef(x.indexrelid), ' USING '))"
            " FROM pg_index AS x WHERE x.indrelid = to_regclass(quote_ident(%s)) AND NOT x.indisprimary",
            [table],
        )
        for number, (definition,) in enumerate(cursor.fetchall()):
            cursor.execute(f"CREATE INDEX {quote(suffixed(kept, f'_{number}'))} ON {quote(kept)}{definition}")
        unique_indexes(cursor, quote, layout, kept)
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + " + ".join(f"(SELECT count(*) FROM {quote(part.name)})" for part in parts))
        rows = cursor.fetchone()[0]
    retry_on_lock_timeout(
        lambda: _swap(connection, layout, parts, kept, lock_timeout),
        attempts=attempts,
        what=f"swap the oldest partitions of {table}",
    )
    drop_detached(connection, [part.name for part in parts])
    return rows - kept_rows, kept_rows


def mark_detached(cursor, table: str, name: str) -> None:
    """Mark ``name``, just detached from ``table`` in the cursor's transaction, for :func:`drop_detached`."""
    cursor.execute(f"COMMENT ON TABLE {cursor.db.ops.quote_name(name)} IS %s", [DETACHED + table])


def drop_detached(connection, names: list[str]) -> None:
    """Drop tables detached from a partitioned table: no lock of the parent, no writer waits for it."""
    if names:
        quote = connection.ops.quote_name
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE {', '.join(quote(name) for name in names)}")


def leftovers(connection, table: str) -> list[str]:
    """The partitions of ``table`` an interrupted prune detached and did not drop."""
    with connection.cursor() as cursor:
        cursor.execute(_LEFTOVERS_SQL, {"table": table, "mark": DETACHED + table})
        return [name for (name,) in cursor.fetchall()]


def drop_leftovers(connection, table: str) -> list[str]:
    """Drop the partitions of ``table`` an interrupted prune detached and did not drop; their names."""
    names = leftovers(connection, table)
    drop_detached(connection, names)
    return names


def retry_on_lock_timeout(action: Callable[[], object], *, attempts: int, what: str) -> None:
    """Run ``action`` until it does not give up waiting for a lock (``lock_timeout``), ``attempts`` times.

    Statements that lock a partitioned table exclusively set a short
    ``lock_timeout`` rather than queue every writer behind them; between
    attempts the writers that queued meanwhile go through.
    """
    for attempt in range(attempts):
        try:
            action()
            return
        except OperationalError as exc:
            if getattr(exc.__cause__, "sqlstate", None) != "55P03":  # lock_not_available
                raise
            time.sleep(0.01 * (attempt + 1))
    raise RuntimeError(
        f"Could not {what}: writers held the table for {attempts} attempts."
        " Prune again later; nothing was lost."
    )


def _free_name(cursor, quote, base: str) -> str:
    """A name for the copy: ``base``, unless a partition has it (the copy of an earlier prune)."""
    for attempt in range(100):
        name = suffixed(base, f"_{attempt}" if attempt else "")
        cursor.execute("SELECT relispartition FROM pg_class WHERE oid = to_regclass(quote_ident(%s))", [name])
        row = cursor.fetchone()
        if row is None:
            return name
        if not row[0]:  # an earlier attempt's copy, never attached
            cursor.execute(f"DROP TABLE {quote(name)}")
            return name
    raise RuntimeError(f"No free name for a partition like {base}: drop the unattached tables named so.")


def _swap(connection, layout: Layout, parts: list[Partition], kept: str, lock_timeout: str) -> None:
    quote, table, upper = connection.ops.quote_name, layout.table, parts[-1].upper
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = '{lock_timeout}'")
        cursor.execute(f"LOCK TABLE {quote(table)} IN ACCESS EXCLUSIVE MODE")
        for part in parts:
            cursor.execute(f"ALTER TABLE {quote(table)} DETACH PARTITION {quote(part.name)}")
            mark_detached(cursor, table, part.name)
        cursor.execute(
            f"ALTER TABLE {quote(table)} ATTACH PARTITION {quote(kept)} FOR VALUES FROM (MINVALUE) TO (%s)",
            [upper],
        )
        if parts[-1].full_before is not None:
            cursor.execute(
                f"COMMENT ON TABLE {quote(kept)} IS %s", [FULL_BEFORE + parts[-1].full_before.isoformat()]
            )
