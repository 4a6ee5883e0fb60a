"""How the dashboard reads: one transaction a page, without JIT, and the planner's row estimates.

The pages must stay fast on a database with millions of events and messages,
so no figure counts a whole big table: totals that are only informative come
from ``pg_class.reltuples`` (:func:`estimate_rows`). Ages are measured with the
database's clock (``clock_timestamp()``), the clock that wrote the timestamps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from django.db import DEFAULT_DB_ALIAS, connections, transaction

__all__ = ["estimate_rows", "reading", "rows"]


@contextlib.contextmanager
def reading(using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """Run a page's reads in one transaction, without JIT compilation.

    The dashboard's queries are short, but on big tables the planner's cost
    estimates cross ``jit_above_cost`` and PostgreSQL would spend longer
    compiling them (tens of milliseconds) than running them. ``SET LOCAL``
    ends with the transaction: the connection is left as it was found.
    """
    with transaction.atomic(using=using):
        rows("SET LOCAL jit = off", using=using)
        yield


def rows(sql: str, params=None, using: str = DEFAULT_DB_ALIAS) -> list[tuple]:
    """The rows of one statement (an empty list for a statement without a result)."""
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


# A partitioned table has no estimate of its own (autovacuum analyses its
# partitions, never the parent): the sum of its analysed partitions'.
_ESTIMATE_ROWS_SQL = """
SELECT CASE WHEN t.relkind <> 'p' THEN t.reltuples
            ELSE (SELECT sum(p.reltuples) FILTER (WHERE p.reltuples >= 0)
                  FROM pg_inherits AS i JOIN pg_class AS p ON p.oid = i.inhrelid
                  WHERE i.inhparent = t.oid)
       END::bigint
FROM pg_class AS t WHERE t.oid = to_regclass(%s)
"""


def estimate_rows(table: str, using: str = DEFAULT_DB_ALIAS) -> int | None:
    """The planner's estimate of a table's rows (``pg_class.reltuples``); ``None`` if never analysed."""
    found = rows(_ESTIMATE_ROWS_SQL, [table], using)
    return found[0][0] if found and found[0][0] is not None and found[0][0] >= 0 else None
