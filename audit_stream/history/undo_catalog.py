"""What the database holds for an undo: which tables the target touched, and their catalog.

Finds the event tables and logged tables with events of the target, chooses
one source per tracked model or logged table (or says why there can be none),
and reads from the catalog what the writes need: columns and keys of logged
tables, the order of tables by foreign keys, and unique values a restore would
collide with. Every query here runs once per undo, or once per table.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from audit_stream import registry
from audit_stream.history.undo_rowlog import Column, RowLogSource
from audit_stream.history.undo_sources import (
    DELETE,
    RESTORE,
    UPDATE,
    EventSource,
    Refusal,
    Step,
    Target,
    coverage,
)
from audit_stream.triggers import quote_name

__all__ = ["collisions", "event_sources", "found", "order", "row_log_sources"]


# Which event tables and logged tables hold events of the target: one UNION ALL
# branch per event table (and one for the row log, grouped by table).
_FOUND_BRANCH = """SELECT %(table_{i})s::text, NULL::text, count(*), array_agg(DISTINCT e.pgh_xid)
FROM {events} AS e WHERE {target}"""
_FOUND_ROW_LOG = """SELECT 'audit_stream_row_log', r.logged_table, count(*), array_agg(DISTINCT r.pgh_xid)
FROM audit_stream_row_log AS r WHERE {target} GROUP BY r.logged_table"""

# The catalog's view of the logged tables an undo writes: columns, primary key.
_COLUMNS_SQL = """
SELECT a.attrelid::regclass::text, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       a.atthasdef, a.attgenerated <> '' OR a.attidentity = 'a',
       EXISTS (SELECT 1 FROM pg_index AS i
               WHERE i.indrelid = a.attrelid AND i.indisprimary AND a.attnum = ANY (i.indkey))
FROM pg_attribute AS a
WHERE a.attrelid = ANY (%s::regclass[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""

# Foreign keys between the tables an undo writes: its dependency order, and
# the deferrable ones it checks before it ends.
_FOREIGN_KEYS_SQL = """
SELECT c.conname, c.conrelid::regclass::text, c.confrelid::regclass::text, c.condeferrable, c.condeferred
FROM pg_constraint AS c
WHERE c.contype = 'f' AND (c.conrelid = ANY (%s::regclass[]) OR c.confrelid = ANY (%s::regclass[]))
"""

# Unique indexes (plain columns, no predicate) of the tables an undo writes.
_UNIQUE_SQL = """
SELECT i.indrelid::regclass::text, coalesce(c.conname, x.relname),
       array_agg(a.attname ORDER BY k.ord)
FROM pg_index AS i
JOIN pg_class AS x ON x.oid = i.indexrelid
LEFT JOIN pg_constraint AS c ON c.conindid = i.indexrelid AND c.contype IN ('u', 'p')
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k (attnum, ord)
JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = ANY (%s::regclass[]) AND i.indisunique AND NOT i.indisprimary
  AND i.indpred IS NULL AND i.indexprs IS NULL
GROUP BY i.indrelid, c.conname, x.relname
"""

# Rows that a restore or update would collide with: live rows, other than the
# ones the undo itself changes, holding the same values of a unique index.
_COLLISIONS_SQL = """
SELECT n.{pk}::text, t.{pk}::text, {values}
FROM ({incoming}) AS n
JOIN {table} AS t ON {equal} AND t.{pk} <> n.{pk}
WHERE NOT (t.{pk}::text = ANY (%(changed)s))
"""


def _qualified_sql(name: str) -> str:
    schema, _, table = name.rpartition(".")
    return f"{quote_name(schema)}.{quote_name(table)}" if schema else quote_name(table)


def found(cursor, target: Target) -> tuple[dict[str, int], dict[str, int], set[int]]:
    """Event tables and logged tables with events of the target, and the target's transactions."""
    models = registry.event_models
    with_context = [t for t, m in models.items() if m._pgh_has_context or target.kind == "transaction"]
    branches, params = [], {"target": target.param}
    for i, table in enumerate(with_context):
        branches.append(_FOUND_BRANCH.format(i=i, events=quote_name(table), target=target.where("e")))
        params[f"table_{i}"] = table
    branches.append(_FOUND_ROW_LOG.format(target=target.where("r")))
    cursor.execute("\nUNION ALL\n".join(branches), params)
    tables, logged, xids = {}, {}, set()
    for table, logged_table, count, found_xids in cursor.fetchall():
        if not count:
            continue
        xids.update(found_xids)
        if logged_table is None:
            tables[table] = count
        else:
            logged[logged_table] = count
    # Event models without a context key: events written in the target's transactions.
    blind = [t for t in models if t not in with_context]
    if blind and xids:
        xid_target = Target("transaction", tuple(sorted(xids)))
        branches, params = [], {"target": xid_target.param}
        for i, table in enumerate(blind):
            branches.append(_FOUND_BRANCH.format(i=i, events=quote_name(table), target=xid_target.where("e")))
            params[f"table_{i}"] = table
        cursor.execute("\nUNION ALL\n".join(branches), params)
        for table, _, count, _ in cursor.fetchall():
            if count:
                tables[table] = -count  # counted by transaction only: cannot tell they are the target's
    return tables, logged, xids


def event_sources(tables: dict[str, int], partial: bool) -> tuple[list[EventSource], list[Refusal]]:
    """One source per tracked model the target touched, or the reason there can be none."""
    touched: dict[type, list[type]] = defaultdict(list)
    for table in tables:
        event_model = registry.event_models[table]
        touched[event_model.pgh_tracked_model._meta.concrete_model].append(event_model)
    sources, refusals = [], []
    for model, found in touched.items():
        candidates = registry.event_models_for(model)
        complete = [m for m in candidates if coverage(m).complete]
        usable = [m for m in candidates if coverage(m).problem is None]
        fallbacks = [m for m in candidates if coverage(m).fallback]
        if complete:
            sources.append(EventSource(complete[0]))
        elif usable and partial:
            best = max(usable, key=lambda m: len(m._pgh_tracked_fields))
            sources.append(EventSource(best, partial=True))
        elif fallbacks and partial:
            best = max(fallbacks, key=lambda m: len(m._pgh_tracked_fields))
            sources.append(EventSource(best, partial=True, fallback=True))
        else:
            reasons = []
            for m in found:
                cov = coverage(m)
                if tables[m._meta.db_table] < 0:
                    reasons.append(
                        f"{m._meta.label} records no context: its changes in the same"
                        " transactions cannot be told apart"
                    )
                elif cov.problem:
                    reasons.append(
                        cov.problem
                        + (
                            "; pass partial=True (--partial) to put back the states it records before changes"
                            if cov.fallback
                            else ""
                        )
                    )
                else:
                    reasons.append(
                        f"{m._meta.label} does not record {', '.join(cov.missing_fields)}"
                        " (fields=/exclude=): pass partial=True (--partial) to put back only"
                        " what it records"
                    )
            refusals.append(Refusal(model._meta.label_lower, None, "; ".join(reasons)))
    return sources, refusals


def row_log_sources(cursor, logged: dict[str, int]) -> tuple[list[RowLogSource], list[Refusal]]:
    """One source per logged table the target touched (under its current name)."""
    from audit_stream.models import DdlLog

    renames = dict(
        DdlLog.objects.filter(pgh_label="rename")
        .order_by("pgh_id")
        .values_list("former_name", "logged_table")
    )
    current: dict[str, list[str]] = defaultdict(list)
    for name in logged:
        now, seen = name, set()
        while now in renames and now not in seen:
            seen.add(now)
            now = renames[now]
        current[now].append(name)
    cursor.execute(
        "SELECT n, to_regclass(q) IS NOT NULL FROM unnest(%s::text[], %s::text[]) AS t (n, q)",
        [list(current), [_qualified_sql(t) for t in current]],
    )
    exists = dict(cursor.fetchall())
    refusals = [
        Refusal(t, None, f"the table {t} no longer exists (dropped since; see the DDL log)")
        for t in current
        if not exists[t]
    ]
    tables = [t for t in current if exists[t]]
    if not tables:
        return [], refusals
    cursor.execute(_COLUMNS_SQL, [[_qualified_sql(t) for t in tables]])
    columns: dict[str, list[tuple]] = defaultdict(list)
    for rel, *column in cursor.fetchall():
        columns[rel].append(column)
    column_renames = _column_renames(tables)
    sources = []
    for table in tables:
        rel = _regclass_text(cursor, _qualified_sql(table))
        cols = [
            Column(name, type_, not_null, default, generated)
            for name, type_, not_null, default, generated, _ in columns[rel]
        ]
        pk = next(name for name, *_, is_pk in columns[rel] if is_pk)
        names = sorted({table, *current[table]} | {f for f, t in renames.items() if t == table})
        sources.append(RowLogSource(table, names, cols, pk, column_renames.get(table, {})))
    return sources, refusals


def _regclass_text(cursor, table: str) -> str:
    cursor.execute("SELECT %s::regclass::text", [table])
    return cursor.fetchone()[0]


def _column_renames(tables: list[str]) -> dict[str, dict[str, str]]:
    """``{table: {former column: current column}}`` from the DDL log's column lists.

    An ``ALTER TABLE`` that kept the number, order and types of the columns
    but changed names renamed them.
    """
    from audit_stream.models import DdlLog

    renamed: dict[str, dict[str, str]] = defaultdict(dict)
    for table, before, after in (
        DdlLog.objects.filter(pgh_label="alter", logged_table__in=tables)
        .order_by("pgh_id")
        .values_list("logged_table", "columns_before", "columns_after")
    ):
        if len(before) != len(after) or any(
            b["type"] != a["type"] for b, a in zip(before, after, strict=True)
        ):
            continue
        for b, a in zip(before, after, strict=True):
            if b["name"] != a["name"]:
                # an older name maps to the newest one
                for old, new in list(renamed[table].items()):
                    if new == b["name"]:
                        renamed[table][old] = a["name"]
                renamed[table][b["name"]] = a["name"]
    return dict(renamed)


def collisions(cursor, sources, steps: list[Step]) -> list[Refusal]:
    """Unique values that restores and updates would write but other rows now hold."""
    by_source: dict[Any, list[Step]] = defaultdict(list)
    for step in steps:
        by_source[step.source].append(step)
    tables = [_qualified_of(s) for s in by_source]
    if not tables:
        return []
    cursor.execute(_UNIQUE_SQL, [tables])
    uniques: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    for table, name, columns in cursor.fetchall():
        uniques[table].append((name, columns))
    refusals = []
    for source, source_steps in by_source.items():
        writing = [s for s in source_steps if s.action in (RESTORE, UPDATE)]
        changed = [s.object_id for s in source_steps if s.action in (UPDATE, DELETE)]
        if not writing:
            continue
        incoming, params, known = source.incoming(writing)
        table = _regclass_text(cursor, _qualified_of(source))
        for name, columns in uniques.get(table, []):
            if not all(c in known for c in columns):
                continue  # a column the source does not write
            pk = quote_name(source.pk)
            sql = _COLLISIONS_SQL.format(
                pk=pk,
                incoming=incoming,
                table=_qualified_of(source),
                values=", ".join(f"n.{quote_name(c)}::text" for c in columns),
                equal=" AND ".join(f"t.{quote_name(c)} = n.{quote_name(c)}" for c in columns),
            )
            cursor.execute(sql, {**params, "changed": changed})
            for obj, holder, *values in cursor.fetchall():
                shown = ", ".join(f"{c}={v!r}" for c, v in zip(columns, values, strict=True))
                refusals.append(
                    Refusal(
                        source.label,
                        obj,
                        f"cannot put back {shown}: unique constraint"
                        f" {name} is now used by {source.label} {holder}",
                    )
                )
    return refusals


def _qualified_of(source) -> str:
    """The source's table as SQL (quoted), for ``::regclass`` and statements."""
    return source.sql_table


def order(cursor, sources) -> tuple[list, list[tuple[str, bool]]]:
    """Sources with parents first, and the deferrable foreign keys among their tables."""
    if not sources:
        return [], []
    names = {_regclass_text(cursor, _qualified_of(s)): s for s in sources}
    cursor.execute(_FOREIGN_KEYS_SQL, [list(names), list(names)])
    parents: dict[str, set[str]] = defaultdict(set)
    deferrable = []
    for name, child, parent, is_deferrable, deferred in cursor.fetchall():
        if child in names and parent in names and child != parent:
            parents[child].add(parent)
        if is_deferrable:
            deferrable.append((name, deferred))
    ordered, done = [], set()

    def visit(table: str, path: frozenset) -> None:
        if table in done or table in path:  # a cycle: deferred constraints settle it
            return
        for parent in sorted(parents[table]):
            visit(parent, path | {table})
        done.add(table)
        ordered.append(names[table])

    for table in sorted(names):
        visit(table, frozenset())
    return ordered, deferrable
