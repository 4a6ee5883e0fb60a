"""Choosing rows by one read, then deleting them in short transactions of a batch each.

The candidates of a table are chosen by a plain SELECT (no locks) into a
temporary table of primary keys; the deletes then take them in primary-key
order, in short transactions, so a concurrent writer waits at most for one
batch. A dry run counts the same SELECT instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from django.db import transaction

from audit_stream.retention.permission import allow_prune

__all__ = [
    "COUNTED_DELETE_BATCH",
    "DELETE_BATCH",
    "DOOMED",
    "DOOMED_UUID",
    "Progress",
    "choosing",
    "create_doomed",
    "drain",
    "drop_doomed",
    "empty_tables",
    "fill",
    "select_of",
]

Progress = Callable[[str, int, int], None]

# The temporary tables of chosen keys (one per key type), for the session.
DOOMED = "_audit_stream_doomed"
DOOMED_UUID = "_audit_stream_doomed_uuid"

# Choosing reads an index or a few objects' rows: no JIT compilation (100-250 ms
# of a statement that reads a whole table) and no parallel workers (each one
# repeated a whole grouping to build its own hash).
_CHOOSING_SETTINGS = "SET LOCAL jit = off; SET LOCAL max_parallel_workers_per_gather = 0"

# One batch: the next `batch` chosen keys, taken from the temporary table and deleted from the table.
DELETE_BATCH = """
WITH batch AS (
    DELETE FROM {doomed}
    WHERE id IN (SELECT id FROM {doomed} ORDER BY id LIMIT %(batch)s)
    RETURNING id
)
DELETE FROM {table} AS t USING batch WHERE t.{pk} = batch.id
"""

# The same for an event table whose counts lose the events deleted, in the same
# statement: {returning}, the columns of the deleted rows the counts read, and
# {counted}, the CTEs that subtract them (counts.SUBTRACT, references.SUBTRACT),
# each after a comma. Returns the number of rows deleted.
COUNTED_DELETE_BATCH = """
WITH batch AS (
    DELETE FROM {doomed}
    WHERE id IN (SELECT id FROM {doomed} ORDER BY id LIMIT %(batch)s)
    RETURNING id
), gone AS (
    DELETE FROM {table} AS t USING batch WHERE t.pgh_id = batch.id
    RETURNING {returning}
){counted}
SELECT count(*) FROM gone
"""


def create_doomed(cursor) -> None:
    cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {DOOMED} (id bigint PRIMARY KEY)")
    cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {DOOMED_UUID} (id uuid PRIMARY KEY)")


def empty_tables(cursor, tables: list[str]) -> set[str]:
    """Which of ``tables`` have no row, in one round trip (a run skips them: each cost ~7).

    A row written to one of them after this read is newer than the run: the
    run leaves it, as if it had started a moment earlier.
    """
    if not tables:
        return set()
    quote = cursor.db.ops.quote_name
    # One branch per table, its name bound: %(t0)s, %(t1)s, ...
    sql = "\nUNION ALL\n".join(
        f"SELECT %(t{i})s WHERE NOT EXISTS (SELECT FROM {quote(table)})" for i, table in enumerate(tables)
    )
    cursor.execute(sql, {f"t{i}": table for i, table in enumerate(tables)})
    return {row[0] for row in cursor.fetchall()}


def drop_doomed(cursor) -> None:
    cursor.execute(f"DROP TABLE IF EXISTS {DOOMED}, {DOOMED_UUID}")


@contextlib.contextmanager
def choosing(cursor):
    """A transaction with the settings of a choosing read (see ``_CHOOSING_SETTINGS``)."""
    with transaction.atomic(using=cursor.db.alias):
        cursor.execute(_CHOOSING_SETTINGS)
        yield


def fill(cursor, sql: str, params: dict, *, count_only: bool = False) -> int:
    """Choose the candidates of ``sql`` (an ``INSERT INTO <temporary table> (id) SELECT ...``).

    ``count_only`` (dry runs): count them instead, without writing a
    temporary table and its index: the same rows, exactly, at a fraction of
    the cost.
    """
    with choosing(cursor):
        if count_only:
            cursor.execute(f"SELECT count(*) FROM ({select_of(sql)}) AS candidates", params)
            return cursor.fetchone()[0]
        cursor.execute(f"TRUNCATE {DOOMED}, {DOOMED_UUID}")
        cursor.execute(sql, params)
        return cursor.rowcount


def select_of(sql: str) -> str:
    """The SELECT of candidates (``INSERT INTO <temporary table> (id) SELECT ...``): no INSERT line."""
    return sql.strip().split("\n", 1)[1]


def drain(
    connection,
    table: str,
    pk: str,
    total: int,
    batch_size: int,
    progress: Progress | None,
    event_table: bool,
    doomed: str = DOOMED,
    sql: str | None = None,
    params: dict | None = None,
) -> int:
    """Delete the chosen rows of ``table`` (their keys in the temporary table ``doomed``) in batches.

    ``sql``: the batch statement, :data:`DELETE_BATCH` by default; one that
    returns a row returns the rows it deleted (its row count counts something else).
    """
    done = 0
    if sql is None:
        sql = DELETE_BATCH.format(
            table=connection.ops.quote_name(table), pk=connection.ops.quote_name(pk), doomed=doomed
        )
    while done < total:
        with transaction.atomic(using=connection.alias):
            guard = allow_prune(connection.alias) if event_table else contextlib.nullcontext()
            with guard, connection.cursor() as cursor:
                cursor.execute(sql, {**(params or {}), "batch": batch_size})
                deleted = cursor.fetchone()[0] if cursor.description else cursor.rowcount
        if deleted == 0 and done < total:
            # Rows chosen but already gone (deleted meanwhile): nothing left to take.
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT count(*) FROM {doomed}")
                if cursor.fetchone()[0] == 0:
                    break
        done += deleted
        if progress:
            progress(table, done, total)
    return done
