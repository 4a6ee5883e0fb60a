"""Event declarations: what to record, and when.

``Event`` is a label for events the application creates itself
(:func:`audit_stream.create_event`). ``DatabaseEvent`` and its shortcuts are
recorded by PostgreSQL triggers on every write path: ``save()``,
``QuerySet.update()``, ``bulk_create``, ``bulk_update``, ``delete()`` and raw
SQL.

Every database event is captured by a statement-level ``AFTER`` trigger that
reads the affected rows from a transition table. ``when`` is accepted for
compatibility with django-pghistory; what is stored is decided by
``snapshot``: ``"OLD"`` (the row before the statement) or ``"NEW"`` (the row
after it).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pgtrigger

from audit_stream import triggers

if TYPE_CHECKING:
    from django.db import models

__all__ = [
    "AfterInsert",
    "AfterInsertOrUpdate",
    "AfterUpdate",
    "BeforeDelete",
    "BeforeUpdate",
    "DatabaseEvent",
    "Event",
    "Snapshot",
    "delete_labels",
]

_OPERATIONS = {
    "INSERT": pgtrigger.Insert,
    "UPDATE": pgtrigger.Update,
    "DELETE": pgtrigger.Delete,
}
_LABEL = re.compile(r"^[A-Za-z0-9_.:\- ]{1,64}$")


class Event:
    """An event the application records itself, with :func:`audit_stream.create_event`.

    Args:
        label: The name of the event, stored in ``pgh_label``.
    """

    label: str | None = None

    def __init__(self, label: str | None = None) -> None:
        self.label = label or self.label
        if not self.label:
            raise ValueError(
                f"Must supply label attribute to event: pass {type(self).__name__}('shipped'),"
                f" or set label = '...' on a subclass of {type(self).__name__}."
            )
        if not _LABEL.match(self.label):
            raise ValueError(
                f"Invalid event label {self.label!r}: use 1 to 64 letters, digits, spaces"
                " or the characters _ . : -"
            )

    def setup(self, event_model: type[models.Model]) -> None:
        """Set up the event for the event model (manual events need nothing)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r})"


class DatabaseEvent(Event):
    """An event recorded automatically by a trigger when the database changes.

    Args:
        label: The event label.
        when: ``pgtrigger.Before`` or ``pgtrigger.After``. Kept for
            compatibility: events are always captured once per statement
            after it ran; ``snapshot`` decides which row is stored.
        condition: A ``pgtrigger.Q`` or ``pgtrigger.Condition`` over ``old__``
            and ``new__`` fields; only rows that satisfy it are recorded.
        operation: ``pgtrigger.Insert``, ``pgtrigger.Update``,
            ``pgtrigger.Delete`` or a combination with ``|``.
        snapshot: ``"OLD"`` or ``"NEW"``: the row stored in the event.
            Defaults to ``"OLD"`` for deletes and ``"NEW"`` otherwise.
    """

    when: pgtrigger.When | None = pgtrigger.After
    condition: pgtrigger.Condition | None = None
    operation: pgtrigger.Operation | None = None
    snapshot: str | None = None

    def __init__(
        self,
        label: str | None = None,
        when: pgtrigger.When | None = None,
        condition: pgtrigger.Condition | None = None,
        operation: pgtrigger.Operation | None = None,
        snapshot: str | None = None,
    ) -> None:
        super().__init__(label)
        self.when = when or self.when
        self.condition = condition or self.condition
        self.operation = operation or self.operation
        self.snapshot = snapshot or self.snapshot

        if self.when not in (pgtrigger.Before, pgtrigger.After):
            raise ValueError(f"{self!r}: when must be pgtrigger.Before or pgtrigger.After.")
        if self.operation is None:
            raise ValueError(f"{self!r}: pass operation=pgtrigger.Insert, Update, Delete or a combination.")
        for op in self.operations:
            if op not in _OPERATIONS:
                raise ValueError(
                    f"{self!r}: operation {op!r} is not supported; use INSERT, UPDATE or DELETE"
                    " (UPDATE OF is not: use a condition such as"
                    " pgtrigger.Q(old__field__df=pgtrigger.F('new__field')))."
                )
        if self.snapshot is None:
            self.snapshot = "OLD" if self.operations == ["DELETE"] else "NEW"
        if self.snapshot not in ("OLD", "NEW"):
            raise ValueError(f'{self!r}: snapshot must be "OLD" or "NEW".')
        if self.snapshot == "NEW" and "DELETE" in self.operations:
            raise ValueError(f'{self!r}: a delete has no "NEW" row; use snapshot="OLD".')
        if self.snapshot == "OLD" and "INSERT" in self.operations:
            raise ValueError(f'{self!r}: an insert has no "OLD" row; use snapshot="NEW".')

    @property
    def operations(self) -> list[str]:
        """The operations as a list of ``"INSERT"``, ``"UPDATE"``, ``"DELETE"``."""
        return [op.strip() for op in str(self.operation).split(" OR ")]

    def _condition_sql(self, operation: str, event_model: type[models.Model]) -> str:
        if self.condition is None:
            return ""
        sql = self.condition.resolve(event_model.pgh_tracked_model).strip()
        missing = {"INSERT": "OLD", "DELETE": "NEW"}.get(operation)
        if missing and missing in triggers.references(sql):
            raise ValueError(
                f"{self!r} on {event_model.pgh_tracked_model._meta.label}: the condition refers"
                f" to {missing}, which an {operation} does not have. Declare a separate event"
                " for that operation."
            )
        return sql

    def _trigger_name(self, operation: str, event_model: type[models.Model]) -> str:
        # Unique per (event model, label, operation) on the tracked table:
        # two event models may both record a "snapshot" of the same model.
        slug = re.sub(r"[^0-9a-zA-Z]+", "_", self.label).strip("_").lower()[:28] or "event"
        suffix = {"INSERT": "ins", "UPDATE": "upd", "DELETE": "del"}[operation]
        return f"{slug}_{suffix}_{event_model._pgh_key}"

    def get_triggers(self, event_model: type[models.Model]) -> list[triggers.EventTrigger]:
        """The triggers that record this event into ``event_model``."""
        return [
            triggers.EventTrigger(
                name=self._trigger_name(op, event_model),
                event_model=event_model,
                label=self.label,
                operation=_OPERATIONS[op],
                snapshot=self.snapshot,
                condition_sql=self._condition_sql(op, event_model),
            )
            for op in self.operations
        ]


class AfterInsert(DatabaseEvent):
    """Records the new row after an insert."""

    label = "after_insert"
    operation = pgtrigger.Insert
    snapshot = "NEW"


class AfterUpdate(DatabaseEvent):
    """Records the new row after an update."""

    label = "after_update"
    operation = pgtrigger.Update
    snapshot = "NEW"


class BeforeUpdate(DatabaseEvent):
    """Records the old row of an update."""

    label = "before_update"
    when = pgtrigger.Before
    operation = pgtrigger.Update
    snapshot = "OLD"


class BeforeDelete(DatabaseEvent):
    """Records the old row of a delete."""

    label = "before_delete"
    when = pgtrigger.Before
    operation = pgtrigger.Delete
    snapshot = "OLD"


class AfterInsertOrUpdate(DatabaseEvent):
    """Records the new row after an insert or an update."""

    label = "after_insert_or_update"
    operation = pgtrigger.Insert | pgtrigger.Update
    snapshot = "NEW"


class Snapshot(DatabaseEvent):
    """Records every insert, and every update that changes a tracked field.

    An update that writes the same values (or changes only untracked fields)
    records nothing.
    """

    label = "snapshot"
    operation = pgtrigger.Insert | pgtrigger.Update
    snapshot = "NEW"

    def __init__(self, label: str | None = None) -> None:
        super().__init__(label)

    def _condition_sql(self, operation: str, event_model: type[models.Model]) -> str:
        if operation != "UPDATE":
            return ""
        columns = [
            f.column
            for f in event_model.pgh_tracked_model._meta.concrete_fields
            if f.attname in event_model._pgh_tracked_fields
        ]
        return " OR ".join(f'OLD."{c}" IS DISTINCT FROM NEW."{c}"' for c in columns) or "FALSE"


def delete_labels(event_model: type[models.Model]) -> list[str]:
    """The labels of ``event_model``'s events that record deletes (and only deletes).

    The fold, ``AggregateEvent`` and the admin treat such an event as the
    object's end: its diff is ``{column: [old, null]}``.
    """
    return [
        event.label
        for event in event_model.pgh_events
        if isinstance(event, DatabaseEvent) and event.operations == ["DELETE"]
    ]
