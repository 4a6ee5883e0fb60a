"""Where an undo reads and writes: one source per tracked model or logged table.

An undo (:mod:`audit_stream.history.undo`) asks each source, with a constant
number of statements whatever the number of objects:

* ``plan``: for every object the target (contexts or transactions) changed,
  its state just before the target's first change to it, whether it exists
  now, and the later changes made by others (conflicts);
* ``write``: one ``INSERT``, ``UPDATE`` or ``DELETE`` statement per action,
  reading the states to put back from history itself.

Here: what every source shares (the target, steps, conflicts, refusals) and
:class:`EventSource`, which reads an event model of a tracked model;
:class:`audit_stream.history.undo_rowlog.RowLogSource` reads the row log of a
table logged by ``initlogging``. All SQL is written out here, values bound as parameters; names come
from model metadata or the catalog, quoted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import models

from audit_stream import events as _events
from audit_stream.aggregate import ExactDecoder
from audit_stream.triggers import quote_name

__all__ = ["Conflict", "Coverage", "EventSource", "Refusal", "Step", "Target", "coverage"]

DELETE, RESTORE, UPDATE, NOTHING = "delete", "restore", "update", "nothing"


@dataclass(frozen=True)
class Target:
    """What to undo: contexts (UUID strings) or transactions (xid8 as integers)."""

    kind: str  # "context" or "transaction"
    ids: tuple

    def where(self, alias: str) -> str:
        """The SQL condition "this event row belongs to the target" (parameter ``%(target)s``)."""
        return _TARGET_SQL[self.kind].format(alias=alias)

    @property
    def param(self) -> list:
        return list(self.ids)


# An event row of the target; one definition for event tables and the row log.
# `IS TRUE`: a row without context is not the target's (never NULL).
_TARGET_SQL = {
    "context": "({alias}.pgh_context_id = ANY (%(target)s::uuid[])) IS TRUE",
    "transaction": "({alias}.pgh_xid = ANY (%(target)s::bigint[])) IS TRUE",
}


@dataclass(frozen=True)
class Conflict:
    """A change to an undone object made after the target's first change to it, by someone else."""

    model: str
    object_id: str
    event: str  # "<event table>:<pgh_id>"
    label: str
    context_id: str | None
    created_at: str

    def __str__(self) -> str:
        who = f"context {self.context_id}" if self.context_id else "no context"
        return (
            f"{self.model} {self.object_id}: changed after it by {self.event} ({self.label},"
            f" {self.created_at}, {who})"
        )


@dataclass(frozen=True)
class Refusal:
    """An object (or a whole model) the undo cannot put back, and why."""

    model: str
    object_id: str | None
    reason: str

    def __str__(self) -> str:
        return f"{self.model}{'' if self.object_id is None else ' ' + self.object_id}: {self.reason}"


@dataclass
class Step:
    """What the undo does to one object: ``delete``, ``restore``, ``update`` or ``nothing``.

    ``changes`` lists ``(column, value now, value after the undo)`` for an
    update (for a restore, the values it puts back; for a delete, the values
    it removes), as JSON values.
    """

    model: str
    object_id: str
    action: str
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    source: Any = field(default=None, repr=False, compare=False)
    # What the source's write statement needs (an event id, or the row as JSON text).
    data: Any = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return f"{self.action} {self.model} {self.object_id}"


def loads_exact(text: str | None) -> Any:
    """JSON text as PostgreSQL wrote it, numbers with a fraction as Decimal."""
    return None if text is None else json.loads(text, cls=ExactDecoder)


def later_changes(model: str, object_id: str, table: str, text: str) -> list[Conflict]:
    """The conflicts of one object, from the plan query's JSON array of later events."""
    return [
        Conflict(model, object_id, f"{table}:{pgh_id}", label, context_id, created_at)
        for pgh_id, label, context_id, created_at in loads_exact(text) or []
    ]


def diff_values(columns: Iterable[str], now: dict | None, then: dict | None) -> list[tuple[str, Any, Any]]:
    """``(column, now, then)`` for each column whose values differ (a missing state is empty)."""
    now, then = now or {}, then or {}
    return [(c, now.get(c), then.get(c)) for c in columns if now.get(c) != then.get(c)]


def action_for(existed: bool, live: dict | None, changes: list) -> str:
    """What to do to an object that existed (or not) before the target and exists now (or not)."""
    if existed and live is not None:
        return UPDATE if changes else NOTHING
    if existed:
        return RESTORE
    return DELETE if live is not None else NOTHING


# --- tracked models: an event model ---------------------------------------------------------------


@dataclass
class Coverage:
    """What an event model records of its tracked model, as far as undo is concerned."""

    trail: list[str]  # labels of unconditional NEW inserts/updates and OLD deletes
    inserts: list[str]  # labels among them that record inserts
    insert_only: list[str]  # labels among them that record inserts and nothing else (unambiguous)
    deletes: list[str]  # labels among them that record deletes
    missing_fields: list[str]  # tracked fields it does not record
    problem: str | None  # why it cannot say what an object was before a change, if so
    has_obj: bool = True
    recorded: list[str] = field(default_factory=list)  # labels of every database event
    befores: list[str] = field(default_factory=list)  # labels of OLD updates/deletes, conditional or not

    @property
    def fallback(self) -> bool:
        """Whether a partial undo can use the states recorded before changes (OLD snapshots)."""
        return self.has_obj and bool(self.befores)

    @property
    def complete(self) -> bool:
        return self.problem is None and not self.missing_fields


def coverage(event_model: type[models.Model]) -> Coverage:
    """Whether ``event_model`` records enough to put its objects back as they were."""
    tracked = event_model.pgh_tracked_model
    recorded = event_model._pgh_tracked_fields
    # Only the table's own columns: a child of multi-table inheritance records no parent field.
    missing = [
        f.name for f in tracked._meta.concrete_model._meta.local_concrete_fields if f.attname not in recorded
    ]
    trail, inserts, insert_only, deletes, covered = [], [], [], [], set()
    recorded, befores = [], []
    for event in event_model.pgh_events:
        if not isinstance(event, _events.DatabaseEvent):
            continue
        recorded.append(event.label)
        if event.snapshot == "OLD":
            befores.append(event.label)
        unconditional = event.condition is None or isinstance(event, _events.Snapshot)
        if not unconditional:
            continue
        ops = set(event.operations)
        if event.snapshot == "NEW" and ops & {"INSERT", "UPDATE"}:
            trail.append(event.label)
            covered |= ops & {"INSERT", "UPDATE"}
            if "INSERT" in ops:
                inserts.append(event.label)
                if "UPDATE" not in ops:
                    insert_only.append(event.label)
        elif event.snapshot == "OLD" and "DELETE" in ops:
            trail.append(event.label)
            deletes.append(event.label)
            covered.add("DELETE")
    problem = None
    if not event_model._pgh_has_obj:
        problem = f"{event_model._meta.label} records no object (obj_fk=None), so its objects cannot be found"
    else:
        absent = [op.lower() for op in ("INSERT", "UPDATE", "DELETE") if op not in covered]
        if absent:
            problem = (
                f"{event_model._meta.label} does not record every {', '.join(absent)} (its events:"
                f" {', '.join(repr(label) for label in recorded) or 'none'}), so the state before a"
                " change is unknown"
            )
    return Coverage(
        trail, inserts, insert_only, deletes, missing, problem, event_model._pgh_has_obj, recorded, befores
    )


# The objects the target changed, each with its state just before the target's
# first change to it (the previous recorded state), the object as it is now,
# and the later changes that the target did not make. Index scans on
# (pgh_obj, pgh_id) per object, all in one statement.
_EVENTS_PLAN_SQL = """
WITH undone AS (
    -- inserted: an insert-only event (AfterInsert) comes before any delete.
    SELECT e.pgh_obj_id AS obj, min(e.pgh_id) AS first,
           coalesce(min(e.pgh_id) FILTER (WHERE e.pgh_label = ANY (%(insert_only)s))
                    < coalesce(min(e.pgh_id) FILTER (WHERE e.pgh_label = ANY (%(deletes)s)),
                               'infinity'::float8),
                    false) AS inserted
    FROM {events} AS e
    WHERE {target_e} AND e.pgh_label = ANY (%(trail)s)
    GROUP BY e.pgh_obj_id
)
SELECT u.obj::text, u.first, u.inserted, f.pgh_label, to_jsonb(f)::text,
       p.pgh_id, p.pgh_label, to_jsonb(p)::text, to_jsonb(t)::text, l.later::text
FROM undone AS u
JOIN {events} AS f ON f.pgh_id = u.first
LEFT JOIN LATERAL (
    -- The object's last recorded state before the target's first change.
    SELECT * FROM {events} AS b
    WHERE b.pgh_obj_id = u.obj AND b.pgh_id < u.first AND b.pgh_label = ANY (%(trail)s)
    ORDER BY b.pgh_id DESC
    LIMIT 1
) AS p ON true
LEFT JOIN LATERAL (
    -- Changes after that first one which the target did not make: conflicts.
    SELECT jsonb_agg(jsonb_build_array(a.pgh_id, a.pgh_label, {context_a}, a.pgh_created_at)
                     ORDER BY a.pgh_id) AS later
    FROM {events} AS a
    WHERE a.pgh_obj_id = u.obj AND a.pgh_id > u.first AND a.pgh_label = ANY (%(trail)s)
      AND NOT {target_a}
) AS l ON true
LEFT JOIN {tracked} AS t ON t.{pk} = u.obj
ORDER BY u.first
"""

# Lock the live rows the target changed, before planning: a concurrent writer
# either committed before (and shows as a conflict) or waits for the undo.
_EVENTS_LOCK_SQL = """
SELECT 1 FROM {tracked} AS t
WHERE t.{pk} IN (SELECT e.pgh_obj_id FROM {events} AS e WHERE {target_e})
FOR UPDATE OF t
"""

# Put back recorded states (event ids bound as %s): re-create, update, delete.
_EVENTS_RESTORE_SQL = (
    "INSERT INTO {tracked} ({columns}) SELECT {values} FROM {events} AS e WHERE e.pgh_id = ANY (%s)"
)
_EVENTS_UPDATE_SQL = """
UPDATE {tracked} AS t SET {assignments}
FROM {events} AS e
WHERE e.pgh_id = ANY (%s) AND t.{pk} = e.pgh_obj_id
"""
_EVENTS_DELETE_SQL = """
DELETE FROM {tracked} AS t
WHERE t.{pk} IN (SELECT e.pgh_obj_id FROM {events} AS e WHERE e.pgh_id = ANY (%s))
"""
# The recorded values a restore or update would write (for unique checks).
_EVENTS_INCOMING_SQL = (
    "SELECT e.pgh_obj_id AS {pk}, {values} FROM {events} AS e WHERE e.pgh_id = ANY (%(ids)s)"
)


class EventSource:
    """A tracked model, read through one of its event models."""

    def __init__(
        self, event_model: type[models.Model], *, partial: bool = False, fallback: bool = False
    ) -> None:
        self.event_model = event_model
        self.model = event_model.pgh_tracked_model._meta.concrete_model
        self.label = self.model._meta.label_lower
        self.coverage = coverage(event_model)
        self.partial = partial
        # Only some changes recorded: each object goes back to the state its first
        # recorded change kept from before it (an OLD snapshot), if it kept one.
        self.fallback = fallback
        meta, events = self.model._meta, event_model._meta
        recorded = event_model._pgh_tracked_fields
        # (tracked column, event column) of every recorded, writable field but the key.
        self.columns = [
            (f.column, events.get_field(f.name).column)
            for f in meta.local_concrete_fields
            if f.attname in recorded and not f.primary_key and not getattr(f, "generated", False)
        ]
        self.not_null = {f.column for f in meta.local_concrete_fields if not f.null and not f.primary_key}
        self.names = {
            "events": quote_name(events.db_table),
            "tracked": quote_name(meta.db_table),
            "pk": quote_name(meta.pk.column),
        }

    @property
    def table(self) -> str:
        return self.model._meta.db_table

    @property
    def sql_table(self) -> str:
        return self.names["tracked"]

    @property
    def pk(self) -> str:
        return self.model._meta.pk.column

    def _sql(self, template: str, target: Target | None = None, **extra: str) -> str:
        names = {**self.names, **extra}
        if target is not None:
            names.update(target_e=target.where("e"), target_a=target.where("a"))
        context = "a.pgh_context_id" if self.event_model._pgh_has_context else "NULL::uuid"
        return template.format(context_a=context, **names)

    def lock(self, cursor, target: Target) -> None:
        cursor.execute(self._sql(_EVENTS_LOCK_SQL, target), {"target": target.param})

    def plan(self, cursor, target: Target) -> tuple[list[Step], list[Refusal]]:
        """Each object's step, and the objects that cannot be put back."""
        cov = self.coverage
        trail = cov.recorded if self.fallback else cov.trail
        params = {
            "target": target.param,
            "trail": trail,
            "insert_only": cov.insert_only,
            "deletes": cov.deletes,
        }
        cursor.execute(self._sql(_EVENTS_PLAN_SQL, target), params)
        steps, refusals = [], []
        columns = [c for c, _ in self.columns]
        for (
            obj,
            first,
            inserted,
            first_label,
            first_row,
            prev_id,
            prev_label,
            prev_row,
            live,
            later,
        ) in cursor.fetchall():
            live = loads_exact(live)
            if self.fallback:
                if first_label not in cov.befores:
                    refusals.append(
                        Refusal(
                            self.label,
                            obj,
                            f"its first recorded change ({first_label!r}) does not keep the state before it",
                        )
                    )
                    continue
                existed, before_id, before = True, first, loads_exact(first_row)
            elif prev_id is not None:  # the last recorded state before the target's first change
                existed, before_id, before = prev_label not in cov.deletes, prev_id, loads_exact(prev_row)
            elif first_label in cov.deletes:  # a delete records the row as it was
                existed, before_id, before = True, first, loads_exact(first_row)
            elif inserted or (first_label in cov.inserts and not cov.insert_only):
                # History begins with the target: it created the object (an insert-only
                # event says so; a Snapshot's insert-or-update is taken as an insert).
                existed, before_id, before = False, None, None
            else:
                refusals.append(Refusal(self.label, obj, "no state is recorded before the change to undo"))
                continue
            then = {c: before[e] for c, e in self.columns} if existed else None
            changes = diff_values(columns, live, then)
            action = action_for(existed, live, changes)
            if action == RESTORE and cov.missing_fields:
                refusals.append(
                    Refusal(
                        self.label,
                        obj,
                        "cannot be re-created: its history does not record " + ", ".join(cov.missing_fields),
                    )
                )
                continue
            unknown = [
                c for c in self.not_null & set(columns) if action in (RESTORE, UPDATE) and then[c] is None
            ]
            if unknown:
                refusals.append(
                    Refusal(
                        self.label,
                        obj,
                        f"no value is recorded for {', '.join(sorted(unknown))}"
                        " (it is NOT NULL now): it cannot be put back",
                    )
                )
                continue
            if action == DELETE:
                changes = diff_values(columns, live, None)
            steps.append(
                Step(
                    self.label,
                    obj,
                    action,
                    changes,
                    later_changes(self.label, obj, self.event_model._meta.db_table, later),
                    source=self,
                    data=first if action == DELETE else before_id,
                )
            )
        return steps, refusals

    def write(self, cursor, action: str, steps: list[Step]) -> None:
        """One statement that does ``action`` to every object of ``steps``."""
        ids = [s.data for s in steps]
        if action == RESTORE:
            sql = self._sql(
                _EVENTS_RESTORE_SQL,
                columns=", ".join([self.names["pk"], *(quote_name(c) for c, _ in self.columns)]),
                values=", ".join(["e.pgh_obj_id", *(f"e.{quote_name(e)}" for _, e in self.columns)]),
            )
        elif action == UPDATE:
            sql = self._sql(
                _EVENTS_UPDATE_SQL,
                assignments=", ".join(f"{quote_name(c)} = e.{quote_name(e)}" for c, e in self.columns),
            )
        else:
            sql = self._sql(_EVENTS_DELETE_SQL)
        cursor.execute(sql, [ids])

    def incoming(self, steps: list[Step]) -> tuple[str, dict, dict[str, str]]:
        """A relation of the rows a restore or update writes, its parameters, and its column names."""
        sql = _EVENTS_INCOMING_SQL.format(
            pk=self.names["pk"],
            events=self.names["events"],
            values=", ".join(f"e.{quote_name(e)} AS {quote_name(c)}" for c, e in self.columns) or "NULL",
        )
        return sql, {"ids": [s.data for s in steps]}, {c: c for c, _ in self.columns}
