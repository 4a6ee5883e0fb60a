"""What a partitioned history table looks like: its declared layout, and its partitions as they are.

:class:`Layout` is what the ``PARTITIONS`` setting declares for one table
(:func:`declared`); :func:`partitions` lists a table's partitions from
PostgreSQL's catalog, with the time bound recorded on each one the id
sequence has passed (:data:`FULL_BEFORE`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from django.apps import apps

from audit_stream import config, registry

__all__ = [
    "FULL_BEFORE",
    "Layout",
    "Partition",
    "declared",
    "is_partitioned",
    "layout_of",
    "partitions",
    "sequence_next",
    "suffixed",
    "to_regclass",
    "unique_indexes",
]

#: The comment on a partition the id sequence has passed, followed by the time it was seen passed:
#: every row in it was created before that time.
FULL_BEFORE = "audit_stream: full before "


@dataclass(frozen=True)
class Layout:
    """How one table is partitioned: ``size`` ids per partition, ``ahead`` empty ones kept ready.

    ``column`` is the partition key, the table's primary key. ``local_unique``:
    column lists of unique keys kept as a unique index on each partition
    (the table's unique constraints on those columns are kept, not refused).
    """

    table: str
    size: int = 1_000_000
    ahead: int = 2
    column: str = "pgh_id"
    local_unique: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class Partition:
    """One partition: ids ``[lower, upper)`` (None: unbounded), or the default one."""

    name: str
    lower: int | None
    upper: int | None
    default: bool
    full_before: datetime | None  # every event in it was created before this time (None: not known)


def declared() -> dict[str, Layout]:
    """The tables the ``PARTITIONS`` setting declares partitioned, by table name.

    ``"default"`` declares every event model the setting does not name
    (not the row log nor the change feed, which are named on their own).
    """

    raw = dict(config.partitions())
    default = raw.pop("default", None)
    models = {}
    for label in raw:
        try:
            models[label] = apps.get_model(label)
        except (LookupError, ValueError):
            raise ValueError(
                f"PARTITIONS names {label!r}, which is not a model: use an event model's"
                ' "app_label.ModelName", "audit_stream.RowLog", "audit_stream.Change" or "default".'
            ) from None
    options_of = {model: raw[label] for label, model in models.items()}
    if default is not None:
        for model in registry.event_models.values():
            options_of.setdefault(model, default)
    return {model._meta.db_table: layout_of(model, options) for model, options in options_of.items()}


def layout_of(model, options: dict | None = None) -> Layout:
    """The layout of ``model``'s table: its primary key as the partition key, ``options`` (size, ahead)."""
    from audit_stream.models import Change

    options = options or {}
    local_unique = ()
    if model is Change:  # its (event_table, event_id) key, per partition (see the module's docstring)
        local_unique = tuple(
            tuple(model._meta.get_field(name).column for name in constraint.fields)
            for constraint in model._meta.constraints
            if getattr(constraint, "fields", None)
        )
    return Layout(
        model._meta.db_table,
        int(options.get("size", 1_000_000)),
        int(options.get("ahead", 2)),
        model._meta.pk.column,
        local_unique,
    )


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
        if comment and comment.startswith(FULL_BEFORE):
            full = datetime.fromisoformat(comment[len(FULL_BEFORE) :])
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


def sequence_next(cursor, table: str, column: str = "pgh_id") -> int:
    """The id the table's sequence hands out next (not drawing it)."""
    cursor.execute("SELECT pg_get_serial_sequence(quote_ident(%s), %s)", [table, column])
    sequence = cursor.fetchone()[0]
    cursor.execute(f"SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END FROM {sequence}")
    return cursor.fetchone()[0]


def suffixed(name: str, suffix: str) -> str:
    """``name`` ending in ``suffix``, cut to fit PostgreSQL's 63-character identifiers."""
    return name[: 63 - len(suffix)] + suffix


def unique_indexes(cursor, quote, layout: Layout, partition: str) -> None:
    """The ``local_unique`` keys of ``layout``, as unique indexes of one partition."""
    for number, columns in enumerate(layout.local_unique):
        name = suffixed(partition, f"_unique{number or ''}")
        cursor.execute(
            f"CREATE UNIQUE INDEX {quote(name)} ON {quote(partition)} ({', '.join(map(quote, columns))})"
        )


def to_regclass(cursor, table: str):
    """The oid of ``table`` (None: no such table)."""
    cursor.execute("SELECT to_regclass(quote_ident(%s))::oid", [table])
    return cursor.fetchone()[0]
