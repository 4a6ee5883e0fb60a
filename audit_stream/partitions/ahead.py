"""Partitions created ahead of the id sequence, so that a write never lands in the default partition.

The work is done by a database function, ``_audit_stream_ensure_partitions``
(its SQL in ``ensure_partitions.sql`` beside this module, installed by
migrations through :func:`ensure_function`), run as the table's owner so that
beat can keep partitions ahead as a runtime role that owns nothing.
:func:`ensure` calls it for one table, :func:`ensure_all` for every declared one.
"""

from __future__ import annotations

import re
from pathlib import Path

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from audit_stream import config, triggers
from audit_stream.partitions import counts as partition_counts
from audit_stream.partitions.layout import FULL_BEFORE, Layout, declared, is_partitioned, partitions

__all__ = ["DROP_ENSURE_FUNCTION", "default_rows", "ensure", "ensure_all", "ensure_function", "ensure_in"]

# The partition function's SQL, with the names in braces that ensure_function() fills in.
_ENSURE_SQL = Path(__file__).with_name("ensure_partitions.sql")

# The layout of a partitioned table, recorded on it by the owner (migrate,
# partition_history): the partition function reads it there, so a caller can
# choose neither the size nor how many partitions are made.
_LAYOUT_COMMENT = "audit_stream: partitions of {size} ids, {ahead} ahead"


def ensure_function() -> str:
    """The SQL that (re)creates ``_audit_stream_ensure_partitions(table)`` (migrations install it).

    It does what :func:`ensure` promises for one partitioned table, as the
    table's owner (``SECURITY DEFINER``, pinned ``search_path``), so that the
    beat schedule can keep partitions ahead when it runs as a runtime role
    that owns nothing: creating a partition needs the parent's owner.

    * Only a table of audit_stream's schema partitioned by a range of one
      column and carrying the layout the owner recorded on it
      (:data:`_LAYOUT_COMMENT`) is served; anything else is refused.
    * It creates the missing ranges up to ``ahead`` past the column's
      sequence, moving any rows of that range out of the default partition
      first (PostgreSQL refuses a range that default rows fall in);
    * it records on each partition the sequence has passed that every row
      in it was created before now, and only then (retention trusts that
      bound: an early mark would let it drop rows younger than ``max_age``).

    Returns the names of the partitions created. ``EXECUTE`` is revoked from
    ``PUBLIC``; ``manage.py audit_stream_grants`` grants it to the runtime role.
    """
    schema = config.schema()
    literal = "'" + schema.replace("'", "''") + "'"
    function = triggers.qualified("_audit_stream_ensure_partitions")
    layout = _LAYOUT_COMMENT.format(size=r"(\d+)", ahead=r"(\d+)")
    # The file's leading comment documents the names; the function starts after it.
    lines = _ENSURE_SQL.read_text().splitlines(keepends=True)
    while lines[0].startswith("--"):
        lines.pop(0)
    template = "".join(lines)
    names = {
        "{function}": function,
        "{search_path}": triggers.search_path(),
        "{schema}": literal,
        "{layout_pattern}": layout,
        "{full_before}": FULL_BEFORE,
        "{partition_counts}": triggers.qualified(partition_counts.TABLE),
        "{unknown_slot}": str(partition_counts.UNKNOWN),
        "{all_contexts}": f"'{partition_counts.ALL}'::uuid",
    }
    return re.sub(r"\{[a-z_]+\}", lambda name: names[name.group()], template)


DROP_ENSURE_FUNCTION = "DROP FUNCTION IF EXISTS _audit_stream_ensure_partitions(text);"


def ensure(layout: Layout, *, using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """Create ``layout.ahead`` empty partitions past the sequence; returns the names created."""
    connection = connections[using]
    with transaction.atomic(using=using), connection.cursor() as cursor:
        if not is_partitioned(cursor, layout.table):
            return []
        return ensure_in(cursor, layout, connection.ops.quote_name)


def ensure_in(cursor, layout: Layout, quote) -> list[str]:
    """Record ``layout`` on the table when it changed (the owner only), then run the partition function."""
    wanted = _layout_comment(layout)
    cursor.execute(
        "SELECT obj_description(c.oid, 'pg_class'), pg_has_role(current_user, c.relowner, 'USAGE')"
        " FROM pg_class AS c WHERE c.oid = to_regclass(quote_ident(%s))",
        [layout.table],
    )
    recorded, owner = cursor.fetchone()
    if recorded != wanted and owner:
        # A runtime role keeps the recorded layout: a new one takes effect at the next migrate.
        cursor.execute(f"COMMENT ON TABLE {quote(layout.table)} IS %s", [wanted])
    cursor.execute(f"SELECT {triggers.qualified('_audit_stream_ensure_partitions')}(%s)", [layout.table])
    return list(cursor.fetchone()[0])


def _layout_comment(layout: Layout) -> str:
    """The layout as recorded on the table: size, ahead, and each ``local_unique`` key."""
    unique = "".join(f"; unique ({', '.join(columns)})" for columns in layout.local_unique)
    return _LAYOUT_COMMENT.format(size=layout.size, ahead=layout.ahead) + unique


def ensure_all(*, using: str = DEFAULT_DB_ALIAS) -> dict[str, list[str]]:
    """:func:`ensure` for every declared table that is partitioned."""
    return {table: ensure(layout, using=using) for table, layout in declared().items()}


def default_rows(cursor, table: str) -> bool:
    """Whether the default partition of ``table`` holds rows (ids outside every range: partitions missing)."""
    for part in partitions(cursor, table):
        if part.default:
            cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {cursor.db.ops.quote_name(part.name)})")
            return cursor.fetchone()[0]
    return False
