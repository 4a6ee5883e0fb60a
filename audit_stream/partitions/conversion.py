"""Turning an existing history table into a partitioned one, in place and without copying a row.

:func:`convert` makes one table partitioned (``manage.py partition_history``);
:func:`sync` converts every declared table not yet partitioned and creates the
partitions ahead of the others (``migrate`` runs it).
"""

from __future__ import annotations

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from audit_stream.partitions import counts
from audit_stream.partitions.ahead import ensure, ensure_in
from audit_stream.partitions.layout import (
    Layout,
    declared,
    is_partitioned,
    sequence_next,
    suffixed,
    to_regclass,
    unique_indexes,
)

__all__ = ["convert", "sync"]


def convert(layout: Layout, *, using: str = DEFAULT_DB_ALIAS, progress=None) -> bool:
    """Make ``layout.table`` partitioned (False if it already is). One transaction; writers wait for it.

    The table becomes its own first partition, ``<table>_p0`` (ids up to the
    end of the current ``size`` range); a partitioned table with the same
    name, columns, identity (continuing the sequence), indexes (the existing
    ones are attached, not rebuilt) and statement triggers takes its place,
    with a default partition and ``ahead`` partitions after it. Unique
    constraints on ``layout.local_unique`` columns stay on ``<table>_p0``;
    each new partition gets its own unique index on them.
    """
    connection = connections[using]
    table, column, quote = layout.table, layout.column, connection.ops.quote_name
    step = progress or (lambda message: None)
    with transaction.atomic(using=using), connection.cursor() as cursor:
        if is_partitioned(cursor, table):
            return False
        step(f"{table}: locking")
        cursor.execute(f"LOCK TABLE {quote(table)} IN ACCESS EXCLUSIVE MODE")
        _refuse_unpartitionable(cursor, layout)
        next_id = sequence_next(cursor, table, column)
        cursor.execute(
            "SELECT attidentity <> '', pg_get_serial_sequence(quote_ident(%s), %s) FROM pg_attribute"
            " WHERE attrelid = to_regclass(quote_ident(%s)) AND attname = %s",
            [table, column, table, column],
        )
        identity, sequence = cursor.fetchone()  # identity (Django >= 4.1) or serial (an older table)
        first_end = (next_id // layout.size + 1) * layout.size
        first = f"{table}_p0"
        # What the new parent takes over: index and trigger definitions name the table as it is now.
        # Indexes of constraints are not taken over: the primary key is declared again, and the
        # unique keys left (local_unique) stay with the first partition.
        cursor.execute(
            "SELECT i.relname, pg_get_indexdef(i.oid)"
            " FROM pg_index AS x JOIN pg_class AS i ON i.oid = x.indexrelid"
            " WHERE x.indrelid = to_regclass(quote_ident(%s))"
            " AND NOT EXISTS (SELECT 1 FROM pg_constraint AS k WHERE k.conindid = x.indexrelid"
            "                 AND k.conrelid = x.indrelid AND k.contype IN ('p', 'u'))",
            [table],
        )
        indexes = cursor.fetchall()
        cursor.execute(
            "SELECT conname, contype FROM pg_constraint"
            " WHERE conrelid = to_regclass(quote_ident(%s)) AND contype IN ('p', 'u')",
            [table],
        )
        constraints = cursor.fetchall()
        primary_key = next(name for name, kind in constraints if kind == "p")
        cursor.execute(
            "SELECT tgname, pg_get_triggerdef(oid), obj_description(oid, 'pg_trigger') FROM pg_trigger"
            " WHERE tgrelid = to_regclass(quote_ident(%s)) AND NOT tgisinternal",
            [table],
        )
        triggers = cursor.fetchall()

        step(f"{table}: creating the partitioned table")
        cursor.execute(f"ALTER TABLE {quote(table)} RENAME TO {quote(first)}")
        cursor.execute(
            f"ALTER TABLE {quote(first)} RENAME CONSTRAINT {quote(primary_key)} TO {quote(first + '_pkey')}"
        )
        for name, kind in constraints:
            if kind == "u":  # the first partition's unique index of a local_unique key
                cursor.execute(
                    f"ALTER TABLE {quote(first)} RENAME CONSTRAINT {quote(name)}"
                    f" TO {quote(suffixed(name, '_p0'))}"
                )
        for name, _ in indexes:
            cursor.execute(f"ALTER INDEX {quote(name)} RENAME TO {quote(suffixed(name, '_p0'))}")
        cursor.execute(
            f"CREATE TABLE {quote(table)} (LIKE {quote(first)} INCLUDING DEFAULTS INCLUDING IDENTITY"
            f" INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMMENTS)"
            f" PARTITION BY RANGE ({quote(column)})"
        )
        if identity:
            cursor.execute(f"ALTER TABLE {quote(table)} ALTER {quote(column)} RESTART WITH %s", [next_id])
        else:  # the copied default draws from the same sequence, which now belongs to the new table
            cursor.execute(f"ALTER SEQUENCE {sequence} OWNED BY {quote(table)}.{quote(column)}")
        cursor.execute(
            f"ALTER TABLE {quote(table)} ADD CONSTRAINT {quote(primary_key)} PRIMARY KEY ({quote(column)})"
        )
        for _, definition in indexes:
            cursor.execute(definition)  # CREATE INDEX <name> ON <table> ...: now the parent (no rows yet)
        if identity:
            cursor.execute(f"ALTER TABLE {quote(first)} ALTER {quote(column)} DROP IDENTITY")
        # Each trigger moves to the parent: a row-level one is cloned onto every partition by
        # PostgreSQL; a statement-level one (append-only) fires for statements on the parent,
        # as on any later partition (statements naming a partition are the grants' to refuse), and
        # left on the first partition it would be a trigger no model declares (pgtrigger's prune).
        # The comment is pgtrigger's hash of the trigger (it tells installed from outdated).
        for name, definition, comment in triggers:
            cursor.execute(f"DROP TRIGGER {quote(name)} ON {quote(first)}")
            cursor.execute(definition)
            if comment is not None:
                cursor.execute(f"COMMENT ON TRIGGER {quote(name)} ON {quote(table)} IS %s", [comment])

        if table != "audit_stream_change":  # its events were folded uncounted: a drop reads this partition
            counts.mark_unknown(cursor, first)

        step(f"{table}: attaching the existing rows (one validating read)")
        cursor.execute(
            f"ALTER TABLE {quote(table)} ATTACH PARTITION {quote(first)} FOR VALUES FROM (MINVALUE) TO (%s)",
            [first_end],
        )
        cursor.execute(f"CREATE TABLE {quote(table + '_default')} PARTITION OF {quote(table)} DEFAULT")
        unique_indexes(cursor, quote, layout, table + "_default")
        ensure_in(cursor, layout, quote)
    step(f"{table}: done")
    return True


def _refuse_unpartitionable(cursor, layout: Layout) -> None:
    cursor.execute(
        "SELECT conname, array(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY AS c (attnum, n)"
        "                      JOIN pg_attribute AS a ON a.attrelid = k.conrelid AND a.attnum = c.attnum"
        "                      ORDER BY c.n)"
        " FROM pg_constraint AS k"
        " WHERE conrelid = to_regclass(quote_ident(%s)) AND contype IN ('u', 'f', 'x')",
        [layout.table],
    )
    names = [name for name, columns in cursor.fetchall() if tuple(columns) not in layout.local_unique]
    if names:
        raise ValueError(
            f"{layout.table} has unique, foreign-key or exclusion constraints ({', '.join(names)}), which a"
            f" table partitioned by {layout.column} cannot keep as they are: drop them (event models declare"
            " foreign keys with db_constraint=False), then partition it."
        )


def sync(*, using: str = DEFAULT_DB_ALIAS, progress=None) -> list[str]:
    """Convert every declared table not yet partitioned, and create partitions ahead (``migrate`` runs it)."""
    converted = []
    for table, layout in declared().items():
        with connections[using].cursor() as cursor:
            if to_regclass(cursor, table) is None:
                continue  # not migrated yet
        if convert(layout, using=using, progress=progress):
            converted.append(table)
        else:
            ensure(layout, using=using)
    return converted
