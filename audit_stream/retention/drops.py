"""Retention by partition: whole partitions of an event table detached at once, then dropped unread.

Two steps, so that writers wait for as little as possible:

1. detach them all in one short transaction: the one moment writers wait,
   since a detach locks the parent table (ACCESS EXCLUSIVE) for the
   milliseconds the catalog changes take. One lock for every partition, not
   one per partition, and a short ``lock_timeout``, retried, rather than a
   queue of writers behind a detach that waits;
2. in one transaction, take each detached table's events off their
   contexts' counts and count its rows for the report, from the counts the
   fold kept per partition (:mod:`~audit_stream.partitions.counts`:
   the table is not read), and drop them all, outside any lock of the parent
   (:func:`partitions.drop_detached`): the commit that unlinks their files
   (about 0.13 s per gigabyte, measured) holds nothing a writer waits for.
   (A file system mounted with online ``discard`` makes every writer's commit
   wait while it discards the freed blocks, seconds later: README,
   "Partitioned history".)

Reading the partitions instead (one sequential scan each) took 1.2 s at
10,000,000 events and raised a concurrent writer's p99 1.8x, all of it during
the read; from a cold cache the same read took 3.4 s with the writer's p99 at
39 ms (BENCHMARKS.md). A partition the counts do not cover (older than them,
or a converted table's first one) is still read that way: one sequential
scan, which PostgreSQL runs through a small ring of buffers (reading it in
ranges of its primary key went through shared buffers, evicting the writers'
pages, and was slower and worse for them).

A prune interrupted between 1 and 2 leaves marked tables, which the next
prune of the table drops first (:func:`drop_leftovers`), the same way.
``DETACH ... CONCURRENTLY`` (a detach that never blocks writers) is not used:
PostgreSQL refuses it on a table with a default partition, which every
partitioned history table has.
"""

from __future__ import annotations

from django.db import transaction

from audit_stream import partitions
from audit_stream.partitions import counts as partition_counts
from audit_stream.retention import foresight, references

__all__ = ["drop_detached", "drop_leftovers", "drop_partitions", "foresee_leftovers"]

# Detaching locks the parent table (ACCESS EXCLUSIVE) for as long as the
# statements take, milliseconds; waiting for that lock would queue every
# writer behind it, so each attempt gives up after a short wait and tries again.
_DETACH_LOCK_TIMEOUT = "100ms"
_DETACH_ATTEMPTS = 50

# One read of a detached partition the counts do not cover, in the transaction that drops it: its rows
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
        return sum(_foresee_rows(connection, part.name, contexts) for part in parts)
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
    that first counts each one (:func:`_take_rows`): their rows, taken off their contexts' counts exactly
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
            _foresee_rows(connection, name, contexts)


def _take_rows(connection, name: str, contexts: bool) -> int:
    """The rows of a detached partition about to go, taken off their contexts' counts (``contexts``).

    From the partition's counts (:func:`partition_counts.take`); a partition they do not cover is read.
    """
    rows = partition_counts.take(connection, name, into=references.COUNT_TABLE if contexts else None)
    if rows is None:
        with connection.cursor() as cursor:
            cursor.execute(
                (_TAKE_WITH_CONTEXTS if contexts else _TAKE).format(partition=connection.ops.quote_name(name))
            )
            rows = cursor.fetchone()[0]
        partition_counts.forget(connection, name)
    return rows


def _foresee_rows(connection, name: str, contexts: bool) -> int:
    """A dry run's :func:`_take_rows`: the partition's events noted, not subtracted, for the contexts step."""
    rows = partition_counts.foresee(connection, name, into=foresight.FORESEEN if contexts else None)
    if rows is not None:
        return rows
    sql = _TAKE_WITH_CONTEXTS.replace(references.COUNT_TABLE, foresight.FORESEEN) if contexts else _TAKE
    with connection.cursor() as cursor:
        cursor.execute(sql.format(partition=connection.ops.quote_name(name)))
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
