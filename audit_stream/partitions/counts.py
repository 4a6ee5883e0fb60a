"""Per-partition counts (``PartitionCount``): a partition that retention drops is not read.

Dropping a partition must take its events off their contexts' counts
(:mod:`~audit_stream.retention.references`) and report how many rows went.
Reading the partition for that (one sequential scan of a gigabyte or more)
was the slow part of a drop, and it stalled concurrent writers: at
10,000,000 events their p99 rose 1.8x during it, and from a cold cache a
read of 1.9 GB took 3.4 s with writers' p99 at 39 ms (BENCHMARKS.md).
Instead the counts are kept as the events are folded, per partition:

* the fold adds, in a statement-level trigger on ``audit_stream_change``
  (so whatever code folds, every change written is counted), each event it
  folds of a partitioned table to the partition that holds it (its
  ``tableoid``, one primary-key probe per event of the batch, rows the batch
  has just read), per context and in all (:data:`ALL`), in one of
  :data:`_SLOTS` rows per key chosen by the transaction id, so that lanes
  folding one table in parallel rarely wait for the same row;
* retention's batches (the partition straddling the cutoff, ``keep_last``)
  and erasure add the folded events they delete, negative
  (:data:`DELETED`), with the same test of "folded" as the contexts' counts
  (:data:`SUBTRACT`): what they take off the contexts' counts is taken off
  here, and nothing else, so that a drop never takes it off twice;
* a drop (:func:`take`) deletes the partition's rows here, subtracts their
  sums from the contexts' counts, and reports the total, in the transaction
  that drops the partition.

Each row names the partition's file (``pg_relation_filenode``) when it was
counted: a partition rewritten since (``TRUNCATE``, ``VACUUM FULL``,
``CLUSTER``, pg_repack, a logical restore such as ``pg_restore``) may no
longer hold what was counted, and is read when dropped, as before. So is a
partition whose events were folded before it was counted, which carries an
:data:`UNKNOWN` row: every partition there was when the counts were added
(migration 0039), a table's first partition made by
:func:`~audit_stream.partitions.convert`, and a partition that received rows
moved out of the default partition. A partition created by the partition
function starts with no row here (any row of a former table of that name is
deleted). :mod:`audit_stream.retention.drops` reads and takes the counts.

The counts err as the contexts' counts do, upwards only where it is safe: an
event folded after the batch that deletes it read its checkpoint is taken
off neither count by the batch, and is by the drop; an event folded twice
(a recovery) is counted twice in both.
"""

from __future__ import annotations

from audit_stream import config, triggers
from audit_stream.stream import unfolded

__all__ = [
    "ALL",
    "DELETED",
    "SUBTRACT",
    "TABLE",
    "UNKNOWN",
    "foresee",
    "forget",
    "install_sql",
    "mark_all_unknown",
    "mark_unknown",
    "take",
    "uninstall_sql",
]

TABLE = "audit_stream_partition_count"
#: The ``context_id`` of a partition's total (every event, with a context or not).
ALL = "00000000-0000-0000-0000-000000000000"
#: The ``slot`` of the folded events deleted (retention's batches, erasure).
DELETED = -1
#: The ``slot`` of the row that says a partition's events were not all counted.
UNKNOWN = -2
# The fold's rows per key: 0 to _SLOTS - 1, by transaction id.
_SLOTS = 16

_FUNCTION = "_audit_stream_count_partitions"
# Fires after the contexts' counts' trigger (same event: alphabetical order).
_INSERTED = "audit_stream_refs_partitions"


def install_sql() -> str:
    """The trigger function and the statement-level trigger on ``audit_stream_change``'s inserts.

    For each partitioned table among the statement's changes (a catalog
    probe per table: an unpartitioned one costs nothing more), one upsert,
    grouped by partition and context and in key order. The events are found
    through the table's primary key, each probe a lateral subquery the planner
    may not flatten (``OFFSET 0``): a hash join would read the whole table.
    The partitions are named after grouping (joined before, the catalog was
    read once per event: 0.1 ms each), and without JIT (which compiled the
    statement of every batch: 30 ms of a 40 ms statement, 5,000 events).
    Measured: 10 ms per 5,000 events, about 2 microseconds an event.
    """
    function, counts = triggers.qualified(_FUNCTION), triggers.qualified(TABLE)
    schema = triggers.quote_name(config.schema())
    return f"""
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = {triggers.search_path()} SET jit = off
AS $$
DECLARE
    _table text;
BEGIN
    FOR _table IN
        SELECT t.event_table FROM (SELECT DISTINCT r.event_table FROM _audit_stream_rows AS r) AS t
        JOIN pg_catalog.pg_class AS c ON c.oid = to_regclass(quote_ident(t.event_table))
        WHERE c.relkind = 'p'
    LOOP
        EXECUTE format($sql$
            INSERT INTO {counts} AS n (partition, filenode, slot, context_id, events)
            SELECT (SELECT p.relname FROM pg_catalog.pg_class AS p WHERE p.oid = g.tableoid),
                   pg_relation_filenode(g.tableoid)::bigint, $2, coalesce(g.context_id, $3), g.events
            FROM (
                SELECT e.tableoid, r.context_id, count(*) AS events, grouping(r.context_id) AS total
                FROM _audit_stream_rows AS r
                CROSS JOIN LATERAL (
                    SELECT e.tableoid FROM {schema}.%I AS e WHERE e.pgh_id = r.event_id OFFSET 0
                ) AS e
                WHERE r.event_table = $1
                GROUP BY GROUPING SETS ((e.tableoid, r.context_id), (e.tableoid))
            ) AS g
            WHERE g.total = 1 OR g.context_id IS NOT NULL
            ORDER BY 1, 2, 4
            ON CONFLICT (partition, filenode, slot, context_id)
                DO UPDATE SET events = n.events + excluded.events
        $sql$, _table)
        USING _table, (pg_current_xact_id()::text::bigint % {_SLOTS})::smallint, '{ALL}'::uuid;
    END LOOP;
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION {function}() FROM PUBLIC;
{triggers.change_trigger_sql(_INSERTED, function)}"""


def uninstall_sql() -> str:
    return triggers.drop_change_trigger_sql(triggers.qualified(_FUNCTION), _INSERTED)


def mark_unknown(cursor, partition: str) -> None:
    """Say that ``partition``'s events were not all counted: a drop reads it (see the module's docstring).

    Nothing to say before the counts exist (a migration before 0039).
    """
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [triggers.qualified(TABLE)])
    if not cursor.fetchone()[0]:
        return
    cursor.execute(f"DELETE FROM {TABLE} WHERE partition = %s", [partition])
    cursor.execute(
        f"INSERT INTO {TABLE} (partition, filenode, slot, context_id, events)"
        f" VALUES (%s, 0, {UNKNOWN}, '{ALL}', 0)",
        [partition],
    )


def mark_all_unknown(cursor) -> None:
    """:func:`mark_unknown` for every partition of a partitioned history table (the migration's)."""
    cursor.execute(
        "SELECT c.relname FROM pg_inherits AS i"
        " JOIN pg_class AS c ON c.oid = i.inhrelid JOIN pg_class AS parent ON parent.oid = i.inhparent"
        " WHERE parent.relkind = 'p' AND parent.relnamespace = quote_ident(%s)::regnamespace"
        " AND parent.relname <> 'audit_stream_change'",
        [config.schema()],
    )
    for (name,) in cursor.fetchall():
        mark_unknown(cursor, name)


# A CTE that adds, negative, the events of {gone} (a CTE of deleted event rows,
# read as `e`, with tableoid, pgh_xid and pgh_context_id) that the fold counted
# (references.SUBTRACT's test: %(done)s, %(floor)s) to their partitions' counts,
# per context and in all. Only for a partitioned table.
SUBTRACT = f"""counted_partitions AS (
    INSERT INTO {TABLE} AS n (partition, filenode, slot, context_id, events)
    SELECT (SELECT p.relname FROM pg_class AS p WHERE p.oid = g.tableoid),
           pg_relation_filenode(g.tableoid)::bigint, {DELETED},
           coalesce(g.context_id, '{ALL}'::uuid), -g.events
    FROM (
        SELECT e.tableoid, e.pgh_context_id AS context_id, count(*) AS events,
               grouping(e.pgh_context_id) AS total
        FROM {{gone}} AS e
        WHERE %(done)s::pg_snapshot IS NOT NULL AND NOT {unfolded.UNFOLDED}
        GROUP BY GROUPING SETS ((e.tableoid, e.pgh_context_id), (e.tableoid))
    ) AS g
    WHERE g.total = 1 OR g.context_id IS NOT NULL
    ORDER BY 1, 2, 4
    ON CONFLICT (partition, filenode, slot, context_id) DO UPDATE SET events = n.events + excluded.events
)"""

# Whether the counts cover the partition: not marked, and every row counted in the
# file the partition has now (a TRUNCATE, VACUUM FULL, CLUSTER or restore gives it a
# new one: what was counted before may not be what it holds).
_IS_KNOWN = f"""
SELECT NOT EXISTS (
    SELECT 1 FROM {TABLE}
    WHERE partition = %(partition)s
      AND (slot = {UNKNOWN}
           OR filenode IS DISTINCT FROM pg_relation_filenode(to_regclass(%(qualified)s))::bigint)
)
"""

# A drop's sums ({taken}: the partition's rows, here deleted or, in a dry run,
# read) per context, taken off the contexts' counts or noted ({subtracted},
# in key order, as the fold locks them; empty for a table without contexts), and its total.
_SUMS = f"""
WITH taken AS (
    {{taken}}
){{subtracted}}
SELECT coalesce(sum(t.events) FILTER (WHERE t.context_id = '{ALL}'::uuid), 0)::bigint FROM taken AS t
"""
_DELETED = f"DELETE FROM {TABLE} AS l WHERE l.partition = %(partition)s RETURNING l.context_id, l.events"
_READ = f"SELECT l.context_id, l.events FROM {TABLE} AS l WHERE l.partition = %(partition)s"
_SUBTRACTED = f""", subtracted AS (
    INSERT INTO {{counts}} AS n (context_id, events)
    SELECT t.context_id, -sum(t.events) FROM taken AS t
    WHERE t.context_id <> '{ALL}'::uuid
    GROUP BY t.context_id HAVING sum(t.events) <> 0
    ORDER BY t.context_id
    ON CONFLICT (context_id) DO UPDATE SET events = n.events + excluded.events
)"""


def take(connection, partition: str, *, into: str | None) -> int | None:
    """A dropped partition's events, taken off their contexts' counts; None if they were not all counted.

    ``into``: the contexts' counts (:mod:`audit_stream.retention.references`),
    or None for a table without contexts. Runs in the transaction that drops
    ``partition``, whose rows here go with it. None: the partition carries
    :data:`UNKNOWN` and must be read, its rows here then deleted (:func:`forget`).
    """
    subtracted = _SUBTRACTED.format(counts=into) if into else ""
    return _counted(connection, partition, _SUMS.format(taken=_DELETED, subtracted=subtracted))


def foresee(connection, partition: str, *, into: str | None) -> int | None:
    """A dry run's :func:`take`: the sums noted ``into`` a dry run's table, this partition's rows kept."""
    subtracted = _SUBTRACTED.format(counts=into) if into else ""
    return _counted(connection, partition, _SUMS.format(taken=_READ, subtracted=subtracted))


def forget(connection, partition: str) -> None:
    """Delete ``partition``'s rows (read instead, or gone)."""
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE} WHERE partition = %s", [partition])


def _counted(connection, partition: str, sql: str) -> int | None:
    params = {"partition": partition, "qualified": triggers.qualified(partition)}
    with connection.cursor() as cursor:
        cursor.execute(_IS_KNOWN, params)
        if not cursor.fetchone()[0]:
            return None
        cursor.execute(sql, params)
        return cursor.fetchone()[0]
