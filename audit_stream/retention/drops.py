"""Retention by partition: whole partitions of an event table counted, detached at once, then dropped.

Three steps, so that writers wait for as little as possible:

1. count each partition's rows, for the report (a read; it locks nothing a
   writer needs: no row is written to a partition past the cutoff);
2. detach them all in one short transaction: the one moment writers wait,
   since a detach locks the parent table (ACCESS EXCLUSIVE) for the
   milliseconds the catalog changes take. One lock for every partition, not
   one per partition, and a short ``lock_timeout``, retried, rather than a
   queue of writers behind a detach that waits;
3. drop the detached tables, outside any lock of the parent
   (:func:`partitions.drop_detached`): unlinking a partition's files takes
   tens of milliseconds per gigabyte, which no writer waits for.

A prune interrupted between 2 and 3 leaves marked tables, which the next
prune of the table drops first (:func:`drop_leftovers`), their events taken off
their contexts' counts as they go (:mod:`~audit_stream.retention.references`).
``DETACH ... CONCURRENTLY`` (a detach that never blocks writers) is not used:
PostgreSQL refuses it on a table with a default partition, which every
partitioned history table has.
"""

from __future__ import annotations

from django.db import transaction

from audit_stream import partitions
from audit_stream.retention import references

__all__ = ["drop_detached", "drop_leftovers", "drop_partitions"]

# Detaching locks the parent table (ACCESS EXCLUSIVE) for as long as the
# statements take, milliseconds; waiting for that lock would queue every
# writer behind it, so each attempt gives up after a short wait and tries again.
_DETACH_LOCK_TIMEOUT = "100ms"
_DETACH_ATTEMPTS = 50

# A detached partition's events, taken from their contexts' counts (a read of
# the partition, as _count_rows's, in the transaction that drops it).
_SUBTRACT = f"""
INSERT INTO {references.COUNT_TABLE} AS n (context_id, events)
SELECT e.pgh_context_id, -count(*) FROM {{partition}} AS e
WHERE e.pgh_context_id IS NOT NULL
GROUP BY e.pgh_context_id
ORDER BY e.pgh_context_id
ON CONFLICT (context_id) DO UPDATE SET events = n.events + excluded.events
"""


def drop_partitions(connection, table: str, parts, dry_run: bool, progress, *, contexts: bool) -> int:
    """Drop whole partitions (retention by partition): rows counted, detached at once, dropped; rows.

    ``contexts``: the table has a context column; its contexts' counts lose the
    partitions' events (every one folded, or it would not be dropped) in the
    transaction that drops them (:func:`drop_detached`).
    """
    total = 0
    for part in parts:
        total += _count_rows(connection, part.name)
        if progress:
            progress(table, total, total)
    if dry_run or not parts:
        return total
    names = [part.name for part in parts]
    partitions.retry_on_lock_timeout(
        lambda: _detach(connection, table, names),
        attempts=_DETACH_ATTEMPTS,
        what=f"detach {len(names)} partition(s) from {table}",
    )
    drop_detached(connection, names, contexts=contexts)
    return total


def drop_detached(connection, names: list[str], *, contexts: bool) -> None:
    """Drop tables detached from a partitioned table (:func:`partitions.drop_detached`), and, with
    ``contexts``, take their events off their contexts' counts in the same transaction: exactly once,
    whether this prune drops them or the next one (:func:`drop_leftovers`)."""
    with transaction.atomic(using=connection.alias):
        if contexts:
            with connection.cursor() as cursor:
                for name in names:
                    cursor.execute(_SUBTRACT.format(partition=connection.ops.quote_name(name)))
        partitions.drop_detached(connection, names)


def drop_leftovers(connection, table: str, *, contexts: bool) -> list[str]:
    """Drop the partitions of ``table`` an interrupted prune detached and did not drop; their names."""
    names = partitions.leftovers(connection, table)
    drop_detached(connection, names, contexts=contexts)
    return names


def _count_rows(connection, name: str) -> int:
    """The exact number of rows of one partition, for the report: a read of the whole partition."""
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
