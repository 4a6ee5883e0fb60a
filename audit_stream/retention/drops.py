"""Retention by partition: whole partitions of an event table detached and dropped."""

from __future__ import annotations

from django.db import transaction

from audit_stream import partitions

__all__ = ["drop_partitions"]

# Detaching a partition locks the parent table (ACCESS EXCLUSIVE) for as long as
# the statement takes, milliseconds; waiting for that lock would queue every
# writer behind it, so each attempt gives up after a short wait and tries again.
_DETACH_LOCK_TIMEOUT = "100ms"
_DETACH_ATTEMPTS = 50


def drop_partitions(connection, table: str, parts, dry_run: bool, progress) -> int:
    """Drop whole partitions (retention by partition): their rows counted, then detached and dropped."""
    quote = connection.ops.quote_name
    total = 0
    for part in parts:
        rows = _count_rows(connection, part.name)
        if not dry_run:
            _detach(connection, table, part.name)
            with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
                cursor.execute(f"DROP TABLE {quote(part.name)}")  # no longer part of the table: no lock on it
        total += rows
        if progress:
            progress(table, total, total)
    return total


def _count_rows(connection, name: str) -> int:
    """The exact number of rows of one partition, for the report: a read of the whole partition, taken
    before the detach (it locks nothing writers need: no row is written to a partition past the cutoff)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {connection.ops.quote_name(name)}")
        return cursor.fetchone()[0]


def _detach(connection, table: str, name: str) -> None:
    quote = connection.ops.quote_name

    def detach() -> None:
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL lock_timeout = '{_DETACH_LOCK_TIMEOUT}'")
            cursor.execute(f"ALTER TABLE {quote(table)} DETACH PARTITION {quote(name)}")

    partitions.retry_on_lock_timeout(detach, attempts=_DETACH_ATTEMPTS, what=f"detach {name} from {table}")
