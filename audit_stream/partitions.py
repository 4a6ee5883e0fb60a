"""Partitioned history: event tables (and the row log) as native range partitions by ``pgh_id``.

Declared per event model in the ``PARTITIONS`` setting::

    AUDIT_STREAM = {"PARTITIONS": {"shop.ProductEvent": {"size": 1_000_000, "ahead": 2}}}

(``"audit_stream.RowLog"`` for the row log). The partition key is ``pgh_id``,
which stays the primary key everything else relies on (the fold walks it,
``Change.event_id`` points at it). Ids are drawn in time order, so ranges of
``size`` ids follow time: ``<table>_p<first id>`` holds ids ``[first id,
first id + size)``; ``<table>_default`` catches anything else (the dashboard
warns when it holds rows).

* :func:`convert` turns an existing table into the first partition of a new
  partitioned table of the same name in one short transaction: no row is
  copied (the table is attached, its indexes matched; the attach reads it once
  to validate the range). ``manage.py partition_history`` runs it, and
  ``migrate`` runs it for every declared table.
* :func:`ensure` creates the partitions ahead (``ahead`` empty ranges past the
  id sequence), so a write never lands in the default partition; beat runs it
  (task ``audit_stream.ensure_partitions``) and so does ``migrate``. It also
  records, in a table comment, when the sequence passed a partition's end:
  every event of the partition was created before that time (an event's
  ``pgh_created_at`` is its transaction's start, before its id was drawn).
* Retention (:mod:`audit_stream.retention`) drops the partitions whose events
  are all past ``max_age`` by that bound and all folded (:func:`droppable`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from audit_stream import config, triggers
from audit_stream.stream import unfolded

__all__ = [
    "Layout",
    "Partition",
    "convert",
    "declared",
    "default_rows",
    "droppable",
    "ensure",
    "ensure_all",
    "is_partitioned",
    "partitions",
    "sync",
]

_COMMENT_PREFIX = "audit_stream: full before "


@dataclass(frozen=True)
class Layout:
    """How one table is partitioned: ``size`` ids per partition, ``ahead`` empty ones kept ready."""

    table: str
    size: int = 1_000_000
    ahead: int = 2


@dataclass(frozen=True)
class Partition:
    """One partition: ids ``[lower, upper)`` (None: unbounded), or the default one."""

    name: str
    lower: int | None
    upper: int | None
    default: bool
    full_before: datetime | None  # every event in it was created before this time (None: not known)


def declared() -> dict[str, Layout]:
    """The tables the ``PARTITIONS`` setting declares partitioned, by table name."""
    layouts = {}
    for label, options in config.partitions().items():
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError):
            raise ValueError(
                f"PARTITIONS names {label!r}, which is not a model: use an event model's"
                ' "app_label.ModelName" (or "audit_stream.RowLog").'
            ) from None
        table = model._meta.db_table
        layouts[table] = Layout(table, int(options.get("size", 1_000_000)), int(options.get("ahead", 2)))
    return layouts


def is_partitioned(cursor, table: str) -> bool:
    """Whether ``table`` is a partitioned table."""
    cursor.execute("SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass(quote_ident(%s))", [table])
    row = cursor.fetchone()
    return bool(row and row[0])


# The partitions of a table with their bounds as PostgreSQL prints them:
# "FOR VALUES FROM ('1') TO ('1001')", "FOR VALUES FROM (MINVALUE) TO (...)", "DEFAULT".
_PARTITIONS_SQL = """
SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), obj_description(c.oid, 'pg_class')
FROM pg_inherits AS i
JOIN pg_class AS c ON c.oid = i.inhrelid
WHERE i.inhparent = to_regclass(quote_ident(%s))
"""
_BOUND = re.compile(r"FROM \((?:'(-?\d+)'|MINVALUE)\) TO \((?:'(-?\d+)'|MAXVALUE)\)")


def partitions(cursor, table: str) -> list[Partition]:
    """The partitions of ``table``, lowest ids first, the default one last."""
    cursor.execute(_PARTITIONS_SQL, [table])
    found = []
    for name, bound, comment in cursor.fetchall():
        full = None
        if comment and comment.startswith(_COMMENT_PREFIX):
            full = datetime.fromisoformat(comment[len(_COMMENT_PREFIX) :])
        if bound == "DEFAULT":
            found.append(Partition(name, None, None, True, full))
            continue
        lower, upper = _BOUND.search(bound).groups()
        found.append(
            Partition(
                name,
                None if lower is None else int(lower),
                None if upper is None else int(upper),
                False,
                full,
            )
        )
    return sorted(found, key=lambda p: (p.default, -(2**63) if p.lower is None else p.lower))


def _next_id(cursor, table: str) -> int:
    """The id the table's sequence hands out next (not drawing it)."""
    cursor.execute("SELECT pg_get_serial_sequence(quote_ident(%s), 'pgh_id')", [table])
    sequence = cursor.fetchone()[0]
    cursor.execute(f"SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END FROM {sequence}")
    return cursor.fetchone()[0]


def convert(layout: Layout, *, using: str = DEFAULT_DB_ALIAS, progress=None) -> bool:
    """Make ``layout.table`` partitioned (False if it already is). One transaction; writers wait for it.

    The table becomes its own first partition, ``<table>_p0`` (ids up to the
    end of the current ``size`` range); a partitioned table with the same
    name, columns, identity (continuing the sequence), indexes (the existing
    ones are attached, not rebuilt) and statement triggers takes its place,
    with a default partition and ``ahead`` partitions after it.
    """
    connection = connections[using]
    table, quote = layout.table, connection.ops.quote_name
    step = progress or (lambda message: None)
    with transaction.atomic(using=using), connection.cursor() as cursor:
        if is_partitioned(cursor, table):
            return False
        step(f"{table}: locking")
        cursor.execute(f"LOCK TABLE {quote(table)} IN ACCESS EXCLUSIVE MODE")
        _refuse_unpartitionable(cursor, table)
        next_id = _next_id(cursor, table)
        cursor.execute(
            "SELECT attidentity <> '', pg_get_serial_sequence(quote_ident(%s), 'pgh_id') FROM pg_attribute"
            " WHERE attrelid = to_regclass(quote_ident(%s)) AND attname = 'pgh_id'",
            [table, table],
        )
        identity, sequence = cursor.fetchone()  # identity (Django >= 4.1) or serial (an older table)
        first_end = (next_id // layout.size + 1) * layout.size
        first = f"{table}_p0"
        # What the new parent takes over: index and trigger definitions name the table as it is now.
        cursor.execute(
            "SELECT i.relname, pg_get_indexdef(i.oid)"
            " FROM pg_index AS x JOIN pg_class AS i ON i.oid = x.indexrelid"
            " WHERE x.indrelid = to_regclass(quote_ident(%s)) AND NOT x.indisprimary",
            [table],
        )
        indexes = cursor.fetchall()
        cursor.execute(
            "SELECT conname FROM pg_constraint"
            " WHERE conrelid = to_regclass(quote_ident(%s)) AND contype = 'p'",
            [table],
        )
        primary_key = cursor.fetchone()[0]
        cursor.execute(
            "SELECT tgname, pg_get_triggerdef(oid), (tgtype & 1) = 1 FROM pg_trigger"
            " WHERE tgrelid = to_regclass(quote_ident(%s)) AND NOT tgisinternal",
            [table],
        )
        triggers = cursor.fetchall()

        step(f"{table}: creating the partitioned table")
        cursor.execute(f"ALTER TABLE {quote(table)} RENAME TO {quote(first)}")
        cursor.execute(
            f"ALTER TABLE {quote(first)} RENAME CONSTRAINT {quote(primary_key)} TO {quote(first + '_pkey')}"
        )
        for name, _ in indexes:
            cursor.execute(f"ALTER INDEX {quote(name)} RENAME TO {quote(_suffixed(name, '_p0'))}")
        cursor.execute(
            f"CREATE TABLE {quote(table)} (LIKE {quote(first)} INCLUDING DEFAULTS INCLUDING IDENTITY"
            f" INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMMENTS)"
            f" PARTITION BY RANGE (pgh_id)"
        )
        if identity:
            cursor.execute(f"ALTER TABLE {quote(table)} ALTER pgh_id RESTART WITH %s", [next_id])
        else:  # the copied default draws from the same sequence, which now belongs to the new table
            cursor.execute(f"ALTER SEQUENCE {sequence} OWNED BY {quote(table)}.pgh_id")
        cursor.execute(f"ALTER TABLE {quote(table)} ADD CONSTRAINT {quote(primary_key)} PRIMARY KEY (pgh_id)")
        for _, definition in indexes:
            cursor.execute(definition)  # CREATE INDEX <name> ON <table> ...: now the parent (no rows yet)
        if identity:
            cursor.execute(f"ALTER TABLE {quote(first)} ALTER pgh_id DROP IDENTITY")
        for name, definition, row_level in triggers:
            if row_level:  # cloned onto every partition by the parent's copy
                cursor.execute(f"DROP TRIGGER {quote(name)} ON {quote(first)}")
            cursor.execute(definition)

        step(f"{table}: attaching the existing rows (one validating read)")
        cursor.execute(
            f"ALTER TABLE {quote(table)} ATTACH PARTITION {quote(first)} FOR VALUES FROM (MINVALUE) TO (%s)",
            [first_end],
        )
        cursor.execute(f"CREATE TABLE {quote(table + '_default')} PARTITION OF {quote(table)} DEFAULT")
        _ensure(cursor, layout, quote)
    step(f"{table}: done")
    return True


def _suffixed(name: str, suffix: str) -> str:
    return name[: 63 - len(suffix)] + suffix


def _refuse_unpartitionable(cursor, table: str) -> None:
    cursor.execute(
        "SELECT string_agg(conname, ', ') FROM pg_constraint"
        " WHERE conrelid = to_regclass(quote_ident(%s)) AND contype IN ('u', 'f', 'x')",
        [table],
    )
    names = cursor.fetchone()[0]
    if names:
        raise ValueError(
            f"{table} has unique, foreign-key or exclusion constraints ({names}), which a table partitioned"
            " by pgh_id cannot keep as they are: drop them (event models declare foreign keys with"
            " db_constraint=False), then partition it."
        )


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
    return rf"""
CREATE OR REPLACE FUNCTION {function}(_table text)
RETURNS text[] LANGUAGE plpgsql
SECURITY DEFINER SET search_path = {triggers.search_path()}
AS $$
DECLARE
    _parent regclass := to_regclass(format('%I.%I', {literal}, _table));
    _column text;
    _layout text[];
    _size bigint;
    _ahead int;
    _next bigint;
    _end bigint;
    _default text;
    _name text;
    _moved boolean;
    _created text[] := '{{}}';
    _passed text;
BEGIN
    -- A range-partitioned table of this schema, on one column, with a recorded layout.
    SELECT a.attname INTO _column
    FROM pg_catalog.pg_partitioned_table AS pt
    JOIN pg_catalog.pg_attribute AS a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
    WHERE pt.partrelid = _parent AND pt.partstrat = 'r' AND pt.partnatts = 1;
    _layout := regexp_match(obj_description(_parent, 'pg_class'), '^{layout}$');
    IF _column IS NULL OR _layout IS NULL THEN
        RAISE EXCEPTION 'audit_stream: "%" is not a partitioned history table', _table
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Declare it in AUDIT_STREAM["PARTITIONS"] and run migrate as the owner.';
    END IF;
    _size := _layout[1]::bigint;
    _ahead := _layout[2]::int;

    -- The id the column's sequence hands out next (not drawing it).
    EXECUTE format('SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END FROM %s',
                   pg_get_serial_sequence(_parent::text, _column))
        INTO _next;

    -- The end of the highest range, and the default partition. Bounds are read
    -- from PostgreSQL's own text: FOR VALUES FROM ('1') TO ('1001').
    SELECT max(substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''(-?\d+)''\)')::bigint)
    INTO _end
    FROM pg_catalog.pg_inherits AS i JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = _parent;
    _end := coalesce(_end, (_next / _size) * _size);
    SELECT c.relname INTO _default
    FROM pg_catalog.pg_inherits AS i JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = _parent AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT';

    WHILE _end < _next + _ahead * _size LOOP
        _name := _table || '_p' || _end;
        _moved := false;
        IF _default IS NOT NULL THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.%I WHERE %I >= $1 AND %I < $2)',
                           {literal}, _default, _column, _column)
                INTO _moved USING _end, _end + _size;
        END IF;
        IF _moved THEN
            EXECUTE format('ALTER TABLE %s DETACH PARTITION %I.%I', _parent, {literal}, _default);
        END IF;
        EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s FOR VALUES FROM (%s) TO (%s)',
                       {literal}, _name, _parent, _end, _end + _size);
        IF _moved THEN
            EXECUTE format('INSERT INTO %I.%I SELECT * FROM %I.%I WHERE %I >= $1 AND %I < $2',
                           {literal}, _name, {literal}, _default, _column, _column)
                USING _end, _end + _size;
            EXECUTE format('DELETE FROM %I.%I WHERE %I >= $1 AND %I < $2',
                           {literal}, _default, _column, _column)
                USING _end, _end + _size;
            EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I.%I DEFAULT', _parent, {literal}, _default);
        END IF;
        _created := _created || _name;
        _end := _end + _size;
    END LOOP;

    -- Partitions the sequence has passed, not yet marked: every row in one was
    -- created before now (a row's time is its transaction's start, before its id).
    FOR _passed IN
        SELECT c.relname
        FROM pg_catalog.pg_inherits AS i JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
        WHERE i.inhparent = _parent
          AND substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''(-?\d+)''\)')::bigint <= _next
          AND coalesce(obj_description(c.oid, 'pg_class'), '') NOT LIKE '{_COMMENT_PREFIX}%'
    LOOP
        EXECUTE format('COMMENT ON TABLE %I.%I IS %L', {literal}, _passed,
                       '{_COMMENT_PREFIX}' || (to_json(now()) #>> '{{}}'));
    END LOOP;
    RETURN _created;
END;
$$;
REVOKE EXECUTE ON FUNCTION {function}(text) FROM PUBLIC;
"""


DROP_ENSURE_FUNCTION = "DROP FUNCTION IF EXISTS _audit_stream_ensure_partitions(text);"


def ensure(layout: Layout, *, using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """Create ``layout.ahead`` empty partitions past the sequence; returns the names created."""
    connection = connections[using]
    with transaction.atomic(using=using), connection.cursor() as cursor:
        if not is_partitioned(cursor, layout.table):
            return []
        return _ensure(cursor, layout, connection.ops.quote_name)


def _ensure(cursor, layout: Layout, quote) -> list[str]:
    """Record ``layout`` on the table when it changed (the owner only), then run the partition function."""
    wanted = _LAYOUT_COMMENT.format(size=layout.size, ahead=layout.ahead)
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


def ensure_all(*, using: str = DEFAULT_DB_ALIAS) -> dict[str, list[str]]:
    """:func:`ensure` for every declared table that is partitioned."""
    return {table: ensure(layout, using=using) for table, layout in declared().items()}


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


def to_regclass(cursor, table: str):
    cursor.execute("SELECT to_regclass(quote_ident(%s))::oid", [table])
    return cursor.fetchone()[0]


def default_rows(cursor, table: str) -> bool:
    """Whether the default partition of ``table`` holds rows (ids outside every range: partitions missing)."""
    for part in partitions(cursor, table):
        if part.default:
            cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {cursor.db.ops.quote_name(part.name)})")
            return cursor.fetchone()[0]
    return False


# Does a partition hold an unfolded event? Two probes of its pgh_xid index, as
# audit_stream.stream.wakeup asks of a whole table (ordered, so the planner
# never reads the partition sequentially hoping to meet one early).
_HAS_UNFOLDED_SQL = f"""
SELECT (SELECT true FROM {{table}} AS e WHERE {unfolded.NEW} ORDER BY e.pgh_xid LIMIT 1) IS NOT NULL
    OR (SELECT true FROM {{table}} AS e WHERE {unfolded.IN_PROGRESS} ORDER BY e.pgh_xid LIMIT 1) IS NOT NULL
"""


def droppable(cursor, table: str, cutoff: datetime, done: str | None, floor: int) -> list[Partition]:
    """The partitions retention may drop: every event created before ``cutoff``, and folded.

    Created before: the partition was full (the sequence past its end) before
    ``cutoff``. Folded: none of its events is unfolded (the fold's own
    definition, audit_stream.stream.unfolded), probed through the pgh_xid index.
    Only the lowest partitions in a row: a partition is kept, and every later
    one, once one must stay (retention never leaves a hole below newer history).
    """
    if done is None:
        return []
    found = []
    quote = cursor.db.ops.quote_name
    for part in partitions(cursor, table):
        if part.default or part.full_before is None or part.full_before >= cutoff:
            break
        cursor.execute(_HAS_UNFOLDED_SQL.format(table=quote(part.name)), {"done": done, "floor": floor})
        if cursor.fetchone()[0]:
            break
        found.append(part)
    return found
