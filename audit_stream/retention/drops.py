"""Retention by partition: whole partitions of an event table detached at once, then read and dropped.

Two steps, so that writers wait for as little as possible:

1. detach them all in one short transaction: the one moment writers wait,
   since a detach locks the parent table (ACCESS EXCLUSIVE) for the
   milliseconds the catalog changes take. One lock for every partition, not
   one per partition, and a short ``lock_timeout``, retried, rather than a
   queue of writers behind a detach that waits;
2. in one transaction, read each detached table once (its rows counted for
   the report, its events taken off their contexts' counts,
   :mod:`~audit_stream.retention.references`) and drop them all, outside any
   lock of the parent (:func:`partitions.drop_detached`): no row is written to
   them any more, and the commit that unlinks their files (about 0.13 s per
   gigabyte, measured) holds nothing a writer waits for. The read goes
   through each table's primary key in ranges, with a pause after each as
   long as the range took (:func:`_take_rows`): a table of gigabytes is read
   at half speed rather than in one statement that keeps a core and the disk
   busy for seconds while writers commit beside it. (A file system
   mounted with online ``discard`` makes every writer's commit wait while it
   discards the freed blocks, seconds later: README, "Partitioned history".)

A prune interrupted between 1 and 2 leaves marked tables, which the next
prune of the table drops first (:func:`drop_leftovers`), the same way.
``DETACH ... CONCURRENTLY`` (a detach that never blocks writers) is not used:
PostgreSQL refuses it on a table with a default partition, which every
partitioned history table has.
"""

from __future__ import annotations

import time

from django.db import transaction

from audit_stream import partitions
from audit_stream.retention import foresight, references

__all__ = ["drop_detached", "drop_leftovers", "drop_partitions", "foresee_leftovers"]

# Detaching locks the parent table (ACCESS EXCLUSIVE) for as long as the
# statements take, milliseconds; waiting for that lock would queue every
# writer behind it, so each attempt gives up after a short wait and tries again.
_DETACH_LOCK_TIMEOUT = "100ms"
_DETACH_ATTEMPTS = 50

# A detached partition is read in ranges of this many ids of its primary key
# (index range scans: sequential scans are turned off for the read, or a range
# could read the whole table), each followed by a pause of _READ_PAUSE times
# as long as the range took.
_READ_IDS = 100_000
_READ_PAUSE = 1.0
# No JIT compilation either (100 ms or more a range) and no parallel workers.
_READ_SETTINGS = (
    "SET LOCAL enable_seqscan = off; SET LOCAL jit = off; SET LOCAL max_parallel_workers_per_gather = 0"
)

# The rows of one range of a detached partition (%(low)s <= pgh_id < %(high)s).
_RANGE = "{partition} AS e WHERE e.pgh_id >= %(low)s AND e.pgh_id < %(high)s"

# One read of a range of a detached partition, in the transaction that drops
# it: its rows counted (for the report) and, for a table with a context
# column, its events taken off their contexts' counts (every one folded, or it
# would not be dropped). The INSERT runs though nothing reads it (a
# data-modifying WITH).
_TAKE_WITH_CONTEXTS = f"""
WITH per_context AS (
    SELECT e.pgh_context_id AS context_id, count(*) AS events FROM {_RANGE}
    GROUP BY e.pgh_context_id
), subtracted AS (
    INSERT INTO {references.COUNT_TABLE} AS n (context_id, events)
    SELECT p.context_id, -p.events FROM per_context AS p
    WHERE p.context_id IS NOT NULL
    ORDER BY p.context_id
    ON CONFLICT (context_id) DO UPDATE SET events = n.events + excluded.events
)
SELECT coalesce(sum(events), 0)::bigint FROM per_context
"""
_TAKE = f"SELECT count(*) FROM {_RANGE}"
# The ids of a detached partition (two probes of its primary key's index).
_BOUNDS = "SELECT min(e.pgh_id), max(e.pgh_id) FROM {partition} AS e"


def drop_partitions(connection, table: str, parts, dry_run: bool, progress, *, contexts: bool) -> int:
    """Drop whole partitions (retention by partition): detached at once, then read and dropped; their rows.

    ``contexts``: the table has a context column, whose counts lose the
    partitions' events in the transaction that drops them (:func:`drop_detached`).
    A dry run counts the partitions' rows and changes nothing but, for a table
    with a context column, the contexts' counts it foresees (:mod:`~audit_stream.retention.foresight`).
    """
    if dry_run:
        count = _foresee_rows if contexts else _count_rows
        return sum(count(connection, part.name) for part in parts)
    if not parts:
        return 0
    names = [part.name for part in parts]
    partitions.retry_on_lock_timeout(
        lambda: _detach(connection, table, names),
        attempts=_DETACH_ATTEMPTS,
        what=f"detach {len(names)} partition(s) from {table}",
    )
    report = (lambda rows: progress(table, rows, rows)) if progress else None
    return drop_detached(connection, names, contexts=contexts, progress=report)


def drop_detached(connection, names: list[str], *, contexts: bool, progress=None) -> int:
    """Drop tables detached from a partitioned table (:func:`partitions.drop_detached`) in one transaction
    that first reads each one (:func:`_take_rows`): their rows, taken off their contexts' counts exactly
    once, whether this prune drops them or the next one (:func:`drop_leftovers`)."""
    total = 0
    with transaction.atomic(using=connection.alias):
        for name in names:
            total += _take_rows(connection, name, contexts)
            if progress:
                progress(total)
        partitions.drop_detached(connection, names)
    return total


def drop_leftovers(connection, table: str, *, contexts: bool) -> list[str]:
    """Drop the partitions of ``table`` an interrupted prune detached and did not drop; their names."""
    names = partitions.leftovers(connection, table)
    drop_detached(connection, names, contexts=contexts)
    return names


def foresee_leftovers(connection, table: str, *, contexts: bool) -> None:
    """A dry run's :func:`drop_leftovers`: their events noted as the run would take them off the counts."""
    if contexts:
        for name in partitions.leftovers(connection, table):
            _foresee_rows(connection, name)


def _take_rows(connection, name: str, contexts: bool) -> int:
    """The rows of a detached partition about to go, taken off their contexts' counts (``contexts``).

    Run in the dropping transaction (:func:`drop_detached`): read in ranges of
    ``_READ_IDS`` ids, each followed by a pause as long as its read took.
    """
    sql = (_TAKE_WITH_CONTEXTS if contexts else _TAKE).format(partition=connection.ops.quote_name(name))
    total = 0
    with connection.cursor() as cursor:
        cursor.execute(_READ_SETTINGS)
        for low, high in _ranges(cursor, name):
            started = time.monotonic()
            cursor.execute(sql, {"low": low, "high": high})
            total += cursor.fetchone()[0]
            time.sleep((time.monotonic() - started) * _READ_PAUSE)
    return total


def _ranges(cursor, name: str) -> list[tuple[int, int]]:
    """The ranges of ids, ``_READ_IDS`` each, that cover the rows of the detached partition ``name``."""
    cursor.execute(_BOUNDS.format(partition=cursor.db.ops.quote_name(name)))
    lowest, highest = cursor.fetchone()
    if lowest is None:
        return []
    return [(low, min(low + _READ_IDS, highest + 1)) for low in range(lowest, highest + 1, _READ_IDS)]


def _foresee_rows(connection, name: str) -> int:
    """A dry run's :func:`_take_rows`: the partition's events noted, not subtracted, for the contexts step.

    One statement over all its ids: a dry run holds no transaction open and
    writes nothing but its session's temporary tables, so it does not pause.
    """
    sql = _TAKE_WITH_CONTEXTS.replace(references.COUNT_TABLE, foresight.FORESEEN)
    with connection.cursor() as cursor:
        ranges = _ranges(cursor, name)
        if not ranges:
            return 0
        every = {"low": ranges[0][0], "high": ranges[-1][1]}
        cursor.execute(sql.format(partition=connection.ops.quote_name(name)), every)
        return cursor.fetchone()[0]


def _count_rows(connection, name: str) -> int:
    """The exact number of rows of one partition (a dry run's count): a read of the whole partition."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {connection.ops.quote_name(name)}")
        return cursor.fetchone()[0]


def _detach(connection, table: str, names: list[str]) -> None:
    """Detach ``names`` from ``table`` in one transaction (one wait for the lock), each marked."""
    quote = connection.ops.quote_name
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = '{_DETACH_LOCK_TIMEOUT}'")
        cursor.execute(f"LOCK TABLE {quote(table)} IN ACCESS EXCLUSIVE MODE")
        for name in names:
            cursor.execute(f"ALTER TABLE {quote(table)} DETACH PARTITION {quote(name)}")
            partitions.mark_detached(cursor, table, name)
