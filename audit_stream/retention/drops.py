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
   gigabyte, measured) holds nothing a writer waits for. Each table is read
   by one sequential scan, which PostgreSQL runs through a small ring of
   buffers: reading it in ranges of its primary key instead, with pauses
   between them, went through shared buffers, evicting the writers' pages,
   and at 10,000,000 events took 4.6 s instead of 1.2 s and raised a
   concurrent writer's p99 4.2x instead of 1.3x (BENCHMARKS.md). (A file system
   mounted with online ``discard`` makes every writer's commit wait while it
   discards the freed blocks, seconds later: README, "Partitioned history".)

A prune interrupted between 1 and 2 leaves marked tables, which the next
prune of the table drops first (:func:`drop_leftovers`), the same way.
``DETACH ... CONCURRENTLY`` (a detach that never blocks writers) is not used:
PostgreSQL refuses it on a table with a default partition, which every
partitioned history table has.
"""

from __future__ import annotations

from django.db import transaction

from audit_stream import partitions
from audit_stream.retention import foresight, references

__all__ = ["drop_detached", "drop_leftovers", "drop_partitions", "foresee_leftovers"]

# Detaching locks the parent table (ACCESS EXCLUSIVE) for as long as the
# statements take, milliseconds; waiting for that lock would queue every
# writer behind it, so each attempt gives up after a short wait and tries again.
_DETACH_LOCK_TIMEOUT = "100ms"
_DETACH_ATTEMPTS = 50

# One read of a detached partition, in the transaction that drops it: its rows
# counted (for the report) and, for a table with a context column, its events
# taken off their contexts' counts (every one folded, or it would not be
# dropped). The INSERT runs though nothing reads it (a data-modifying WITH).
_TAKE_WITH_CONTEXTS = f"""
WITH per_context AS (
    SELECT e.pgh_context_id AS context_id, count(*) AS events FROM {{partition}} AS e
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
_TAKE = "SELECT count(*) FROM {partition}"


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
    """The rows of a detached partition about to go, taken off their contexts' counts (``contexts``)."""
    with connection.cursor() as cursor:
        cursor.execute(
            (_TAKE_WITH_CONTEXTS if contexts else _TAKE).format(partition=connection.ops.quote_name(name))
        )
        return cursor.fetchone()[0]


def _foresee_rows(connection, name: str) -> int:
    """A dry run's :func:`_take_rows`: the partition's events noted, not subtracted, for the contexts step."""
    sql = _TAKE_WITH_CONTEXTS.replace(references.COUNT_TABLE, foresight.FORESEEN)
    with connection.cursor() as cursor:
        cursor.execute(sql.format(partition=connection.ops.quote_name(name)))
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
