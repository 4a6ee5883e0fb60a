"""Undo a request: put back everything one context, or one transaction, changed.

::

    from audit_stream.history.undo import undo, undo_transaction

    plan = undo(context_id, dry_run=True)   # what would be done, object by object
    plan = undo(context_id)                 # done, in one transaction, in a new context
    undo_transaction(xid)                   # the same for one transaction (pgh_xid)

Every object the target touched goes back to its state just before the
target's first change to it: objects it created are deleted, objects it
deleted are restored with their primary keys, objects it updated get their
previous values. It covers every tracked model (through an event model that
records every field, insert, update and delete) and every table logged by
``initlogging`` (through the row log).

It runs in one transaction, in dependency order (parents restored before
their children, children deleted before their parents), inside a new context
whose metadata names what was undone (``undo_of`` or
``undo_of_transactions``), so the undo is recorded, reaches the change feed
and can itself be undone.

Nothing is changed, and :class:`UndoError` lists every reason, when an object
changed after the target (a conflict; ``force=True`` overwrites it and the new
context says so with ``undo_forced`` and ``undo_overwrote``), when history does
not record enough to put an object back (``partial=True`` puts back what was
recorded), when a table's columns changed so that a state cannot be written
back, or when a restored value is now used by another row of a unique
constraint.

The number of statements depends on the number of models and tables touched,
never on the number of objects: every source is planned and written set-wise.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.db import models as django_models

from audit_stream import tracking
from audit_stream.context import new_context
from audit_stream.history.undo_sources import (
    DELETE,
    NOTHING,
    RESTORE,
    UPDATE,
    Column,
    Conflict,
    EventSource,
    Refusal,
    RowLogSource,
    Step,
    Target,
    coverage,
)
from audit_stream.triggers import quote_name

__all__ = ["Conflict", "Refusal", "Step", "UndoError", "UndoPlan", "undo", "undo_transaction"]

#: Called after each unit of work: (done, total, what).
Progress = Callable[[int, int, str], None]

#: Lines of an UndoError's message before "... and N more" (the plan has them all).
MESSAGE_LINES = 50


@dataclass
class UndoPlan:
    """What an undo does (or, in a dry run, would do), object by object.

    ``steps`` is one :class:`Step` per object the target changed; ``refusals``
    the objects that cannot be put back, with the reason; ``context_id`` the
    undo's own context once it ran.
    """

    target: Target
    steps: list[Step] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    force: bool = False
    partial: bool = False
    dry_run: bool = False
    context_id: uuid.UUID | None = None

    @property
    def conflicts(self) -> list[Conflict]:
        """Every later change, by others, to an object the undo would put back."""
        return [c for s in self.steps if s.action != NOTHING for c in s.conflicts]

    @property
    def blocked(self) -> bool:
        """Whether the undo cannot run as asked (refusals, or conflicts without ``force``)."""
        return bool(self.refusals or (self.conflicts and not self.force))

    def counts(self) -> dict[str, int]:
        """How many objects each action applies to, and the number of conflicts."""
        counts = dict.fromkeys((DELETE, RESTORE, UPDATE, NOTHING), 0)
        for step in self.steps:
            counts[step.action] += 1
        return {**counts, "conflicts": len(self.conflicts), "refused": len(self.refusals)}

    def actions_by_model(self) -> dict[str, set[str]]:
        """``{model: {actions}}`` of the steps that change something (for permission checks)."""
        needed: dict[str, set[str]] = defaultdict(set)
        for step in self.steps:
            if step.action != NOTHING:
                needed[step.model].add(step.action)
        return dict(needed)

    def describe_target(self) -> str:
        kind = "context" if self.target.kind == "context" else "transaction"
        return f"{kind}{'s' if len(self.target.ids) > 1 else ''} {', '.join(map(str, self.target.ids))}"

    def message(self) -> str:
        """Why the undo cannot run, one line per object, with what to do (as :class:`UndoError` says it)."""
        return _message(self)

    def problems(self) -> list[str]:
        """One line per refusal, then per conflict (unless forced)."""
        lines = [str(r) for r in self.refusals]
        if not self.force:
            lines += [str(c) for c in self.conflicts]
        return lines


class UndoError(Exception):
    """An undo that was refused or failed; nothing was changed. ``plan`` has every detail."""

    def __init__(self, message: str, plan: UndoPlan | None = None) -> None:
        super().__init__(message)
        self.plan = plan


def undo(
    contexts: Any,
    *,
    dry_run: bool = False,
    force: bool = False,
    partial: bool = False,
    using: str | None = None,
    progress: Progress | None = None,
) -> UndoPlan:
    """Undo every change of one or more contexts; return the plan (carried out unless ``dry_run``).

    Args:
        contexts: A :class:`~audit_stream.models.Context`, its id (UUID or
            string), a queryset of contexts, or a list of any of those.
        dry_run: Only say what would be done; change nothing.
        force: Overwrite objects changed after the context (conflicts); the
            undo's context records ``undo_forced`` and what it overwrote.
        partial: For models whose history does not record every field, put
            back what was recorded instead of refusing them.
        using: The database alias.
        progress: Called as ``progress(done, total, what)`` as the undo goes.

    Raises:
        UndoError: If an object cannot be put back, changed since (without
            ``force``), or the database refuses the result. Nothing is changed.
    """
    ids = _context_ids(contexts, using or DEFAULT_DB_ALIAS)
    return _run(
        Target("context", tuple(ids)),
        dry_run=dry_run,
        force=force,
        partial=partial,
        using=using,
        progress=progress,
    )


def undo_transaction(
    xids: int | str | Iterable[int | str],
    *,
    dry_run: bool = False,
    force: bool = False,
    partial: bool = False,
    using: str | None = None,
    progress: Progress | None = None,
) -> UndoPlan:
    """Undo every change of one transaction (or several): ``xids`` are ``pgh_xid`` values.

    The arguments and errors are those of :func:`undo`.
    """
    values = [xids] if isinstance(xids, int | str) else list(xids)
    try:
        parsed = tuple(sorted({int(x) for x in values}))
    except (TypeError, ValueError):
        raise UndoError(f"A transaction id is a whole number (an event's pgh_xid), not {values!r}.") from None
    if not parsed:
        raise UndoError("Name at least one transaction to undo.")
    return _run(
        Target("transaction", parsed),
        dry_run=dry_run,
        force=force,
        partial=partial,
        using=using,
        progress=progress,
    )


def _context_ids(contexts: Any, using: str) -> list[str]:
    from audit_stream.models import Context

    if isinstance(contexts, django_models.QuerySet):
        return [str(pk) for pk in contexts.values_list("pk", flat=True)] or _none()
    items = contexts if isinstance(contexts, list | tuple | set) else [contexts]
    ids = []
    for item in items:
        value = item.pk if isinstance(item, Context) else item
        try:
            ids.append(str(uuid.UUID(str(value))))
        except ValueError:
            raise UndoError(f"{value!r} is not a context id (a UUID, as shown in the admin).") from None
    if not ids:
        _none()
    known = {str(pk) for pk in Context.objects.using(using).filter(pk__in=ids).values_list("pk", flat=True)}
    missing = [i for i in ids if i not in known]
    if missing:
        raise UndoError(f"No context {', '.join(missing)}: check the id (Contexts in the admin).")
    return sorted(set(ids))


def _none() -> list[str]:
    raise UndoError("Name at least one context to undo.")


# --- planning -------------------------------------------------------------------------------------

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


def _found(cursor, target: Target) -> tuple[dict[str, int], dict[str, int], set[int]]:
    """Event tables and logged tables with events of the target, and the target's transactions."""
    models = tracking._event_models
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


def _event_sources(tables: dict[str, int], partial: bool) -> tuple[list[EventSource], list[Refusal]]:
    """One source per tracked model the target touched, or the reason there can be none."""
    touched: dict[type, list[type]] = defaultdict(list)
    for table in tables:
        event_model = tracking._event_models[table]
        touched[event_model.pgh_tracked_model._meta.concrete_model].append(event_model)
    sources, refusals = [], []
    for model, found in touched.items():
        candidates = tracking.event_models_for(model)
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


def _row_log_sources(cursor, logged: dict[str, int]) -> tuple[list[RowLogSource], list[Refusal]]:
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


def _collisions(cursor, sources, steps: list[Step]) -> list[Refusal]:
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


def _order(cursor, sources) -> tuple[list, list[tuple[str, bool]]]:
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


# --- running --------------------------------------------------------------------------------------


def _run(
    target: Target, *, dry_run: bool, force: bool, partial: bool, using: str | None, progress: Progress | None
) -> UndoPlan:
    using = using or DEFAULT_DB_ALIAS
    plan = UndoPlan(target, force=force, partial=partial, dry_run=dry_run)
    counter = _Counter(progress)
    try:
        with transaction.atomic(using=using), connections[using].cursor() as cursor:
            tables, logged, _ = _found(cursor, target)
            event_sources, refusals = _event_sources(tables, partial)
            row_sources, row_refusals = _row_log_sources(cursor, logged)
            plan.refusals = refusals + row_refusals
            ordered, deferrable = _order(cursor, [*event_sources, *row_sources])
            # Planning is one unit per source; writing, three (restore, update, delete).
            counter.total = len(ordered) * (1 if dry_run else 4)
            for source in ordered:
                if not dry_run:
                    source.lock(cursor, target)
                steps, refused = source.plan(cursor, target)
                plan.steps += steps
                plan.refusals += refused
                counter.step(f"planned {source.label}")
            plan.refusals += _collisions(cursor, ordered, plan.steps)
            if plan.blocked and not dry_run:
                raise UndoError(_message(plan), plan)
            if dry_run or plan.blocked or not any(s.action != NOTHING for s in plan.steps):
                return plan
            with new_context(**_metadata(plan)) as state:
                plan.context_id = state.id
                _write(cursor, plan, ordered, deferrable, counter.step)
    except DatabaseError as exc:
        raise UndoError(
            f"The database refused the undo of {plan.describe_target()}: {_db_message(exc)}."
            " Nothing was changed.",
            plan,
        ) from exc
    return plan


class _Counter:
    """Reports progress as ``(done, total, what)``."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.done = 0
        self.total = 0

    def step(self, what: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total, what)


def _write(
    cursor,
    plan: UndoPlan,
    ordered: list,
    deferrable: list[tuple[str, bool]],
    step_done: Callable[[str], None],
) -> None:
    """The statements: deletes children first (freeing unique values), updates, restores parents first."""
    by_action: dict[tuple[Any, str], list[Step]] = defaultdict(list)
    for step in plan.steps:
        by_action[(step.source, step.action)].append(step)
    sequence = [
        *((s, DELETE) for s in reversed(ordered)),
        *((s, UPDATE) for s in ordered),
        *((s, RESTORE) for s in ordered),
    ]
    for source, action in sequence:
        steps = by_action.get((source, action))
        if steps:
            source.write(cursor, action, steps)
        step_done(f"{action} {source.label}")
    if deferrable:
        # Check the deferred foreign keys now, while the error can still name the
        # undo, then give each its usual timing back.
        names = ", ".join(quote_name(name) for name, _ in deferrable)
        cursor.execute(f"SET CONSTRAINTS {names} IMMEDIATE")
        later = [quote_name(name) for name, deferred in deferrable if deferred]
        if later:
            cursor.execute(f"SET CONSTRAINTS {', '.join(later)} DEFERRED")


def _metadata(plan: UndoPlan) -> dict[str, Any]:
    key = "undo_of" if plan.target.kind == "context" else "undo_of_transactions"
    metadata: dict[str, Any] = {key: list(plan.target.ids)}
    if plan.force and plan.conflicts:
        metadata["undo_forced"] = True
        metadata["undo_overwrote"] = sorted({c.event for c in plan.conflicts})
    if plan.partial:
        metadata["undo_partial"] = True
    return metadata


def _message(plan: UndoPlan) -> str:
    lines = plan.problems()
    shown = lines[:MESSAGE_LINES]
    more = (
        f"\n  ... and {len(lines) - len(shown)} more (UndoError.plan lists them all)"
        if len(lines) > len(shown)
        else ""
    )
    hint = []
    if plan.conflicts and not plan.force:
        hint.append("force=True (--force) overwrites the later changes")
    if any("partial=True" in r.reason for r in plan.refusals):
        hint.append("partial=True (--partial) puts back what was recorded")
    return (
        f"Cannot undo {plan.describe_target()}; nothing was changed:\n  "
        + "\n  ".join(shown)
        + more
        + (f"\n({'; '.join(hint)}.)" if hint else "")
    )


def _db_message(exc: DatabaseError) -> str:
    cause = exc.__cause__
    diag = getattr(cause, "diag", None)
    parts = [str(cause or exc).strip().splitlines()[0]]
    if diag is not None and diag.message_detail:
        parts.append(diag.message_detail)
    if diag is not None and diag.constraint_name:
        parts.append(f"constraint {diag.constraint_name}")
    return " ".join(parts)
