"""Where a model's rows at a past moment come from: its event table, or the row log.

A *state source* is one ``SELECT`` that returns rows shaped like the model's
table (the same column names), as they were at a moment ``when``: every object
that existed then, with its values then. :mod:`audit_stream.history.query`
puts it in a ``WITH`` named like the table, so the rest of a Django query
(filters, joins, ordering, counting, slicing) runs on it unchanged.

* A model tracked with ``@track``: the latest event of each object at or before
  ``when``, among the events that record its whole state (insert, update,
  ``backfill``) or its end (delete); an object whose latest event is a delete
  did not exist then (:data:`_EVENT_STATE_SQL`).
* A table logged by ``initlogging``: revert's method (rebuild backwards from the
  live row, :func:`audit_stream.rowlog.recorded_state`) done for every row at
  once (:data:`_ROW_LOG_STATE_SQL`).

A model that neither records can not be read as of a moment:
:func:`source_for` raises a ``ValueError`` that says which event is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from django.db import DEFAULT_DB_ALIAS, models

from audit_stream import tracking
from audit_stream.triggers import quote_name

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

__all__ = ["BACKFILL_LABEL", "StateSource", "source_for", "state_event_model"]

#: The label of the events ``manage.py backfill_history`` writes: a row's whole state.
BACKFILL_LABEL = "backfill"

# The state of every object of an event table at %(when)s. DISTINCT ON keeps
# each object's latest event (per object, pgh_id is the order its changes
# happened: writers of one row are serialised by its row lock); only then are
# the objects whose latest event is a delete left out. The ORDER BY matches a
# backward scan of the (pgh_obj, pgh_id) index, and a filter on the object
# (the table's primary key, i.e. pgh_obj_id) is pushed into the DISTINCT ON:
# one object's state is an index scan.
_EVENT_STATE_SQL = """
SELECT {columns}
FROM (
    SELECT DISTINCT ON (e.pgh_obj_id) e.*
    FROM {event_table} AS e
    WHERE e.pgh_created_at <= %s AND e.pgh_label = ANY (%s::text[])
    ORDER BY e.pgh_obj_id DESC, e.pgh_id DESC
) AS e
WHERE e.pgh_label <> ALL (%s::text[])
"""

# The state of every row of a logged table at %(when)s, rebuilt backwards from
# the live rows as revert does (audit_stream.rowlog.recorded_state), set-based:
# * a row with no entry after `when` is as it is now (if it still exists);
# * a row whose first entry after `when` is an insert did not exist then;
# * otherwise it existed: start from the whole row at its first delete after
#   `when` (or from the live row), and put back, column by column, the value
#   before the earliest update after `when` (updates keep only the columns they
#   changed). _audit_stream_merge is a running jsonb ||: ordered newest first,
#   the earliest update's old value is applied last and wins.
# `backfill` entries change nothing and are skipped. Parameters: the table's
# names in the row log (it may have been renamed) and `when`, each three times.
_ROW_LOG_STATE_SQL = """
SELECT r.*
FROM (
    SELECT coalesce(stop.old_data, to_jsonb(t)) || coalesce(undone.data, '{{}}') AS state
    FROM (
        SELECT DISTINCT ON (l.pgh_obj_id) l.pgh_obj_id, l.pgh_label
        FROM audit_stream_row_log AS l
        WHERE l.logged_table = ANY (%s::text[]) AND l.pgh_created_at > %s
          AND l.pgh_label IN ('insert', 'update', 'delete')
        ORDER BY l.pgh_obj_id, l.pgh_id
    ) AS first
    LEFT JOIN LATERAL (
        SELECT l.pgh_id, l.old_data
        FROM audit_stream_row_log AS l
        WHERE l.logged_table = ANY (%s::text[]) AND l.pgh_created_at > %s
          AND l.pgh_obj_id = first.pgh_obj_id AND l.pgh_label = 'delete'
        ORDER BY l.pgh_id
        LIMIT 1
    ) AS stop ON TRUE
    LEFT JOIN LATERAL (
        SELECT _audit_stream_merge(l.old_data ORDER BY l.pgh_id DESC) AS data
        FROM audit_stream_row_log AS l
        WHERE l.logged_table = ANY (%s::text[]) AND l.pgh_created_at > %s
          AND l.pgh_obj_id = first.pgh_obj_id AND l.pgh_label = 'update'
          AND (stop.pgh_id IS NULL OR l.pgh_id < stop.pgh_id)
    ) AS undone ON TRUE
    LEFT JOIN {table} AS t ON t.{pk}::text = first.pgh_obj_id
    WHERE first.pgh_label <> 'insert'
    UNION ALL
    SELECT to_jsonb(t)
    FROM {table} AS t
    WHERE NOT EXISTS (
        SELECT FROM audit_stream_row_log AS l
        WHERE l.logged_table = ANY (%s::text[]) AND l.pgh_created_at > %s
          AND l.pgh_obj_id = t.{pk}::text AND l.pgh_label IN ('insert', 'update', 'delete')
    )
) AS s
CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, s.state) AS r
WHERE s.state IS NOT NULL
"""


@dataclass(frozen=True)
class StateSource:
    """How to read one model's rows as they were at a moment."""

    model: type[models.Model]
    event_model: type[models.Model] | None  # None: the row log
    state_labels: tuple[str, ...] = ()
    delete_labels: tuple[str, ...] = ()

    def sql(self, when: datetime, connection: BaseDatabaseWrapper) -> tuple[str, list]:
        """The ``SELECT`` of the model's rows at ``when``, with its parameters."""
        meta = self.model._meta.concrete_model._meta
        if self.event_model is None:
            from audit_stream import rowlog

            names = rowlog.table_names(self.model, using=connection.alias)
            table = f"{quote_name(_schema(connection))}.{quote_name(meta.db_table)}"
            sql = _ROW_LOG_STATE_SQL.format(table=table, pk=quote_name(meta.pk.column))
            return sql, [names, when] * 4
        event_columns = {f.attname: f.column for f in self.event_model._meta.concrete_fields}
        columns = []
        for field in meta.concrete_fields:
            source = "pgh_obj_id" if field.primary_key else event_columns[field.attname]
            columns.append(f"e.{quote_name(source)} AS {quote_name(field.column)}")
        sql = _EVENT_STATE_SQL.format(
            columns=", ".join(columns), event_table=quote_name(self.event_model._meta.db_table)
        )
        return sql, [when, list(self.state_labels), list(self.delete_labels)]


def _schema(connection: BaseDatabaseWrapper) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_schema()")
        return cursor.fetchone()[0]


def _missing(event_model: type[models.Model]) -> str | None:
    """What ``event_model`` lacks to give its object's whole state at any moment, or None."""
    from audit_stream.events import DatabaseEvent, Snapshot

    tracked = event_model.pgh_tracked_model._meta.concrete_model
    if getattr(event_model, "_pgh_m2m_field", None):
        return "it records a many-to-many field, not the object's fields"
    if not event_model._pgh_has_obj:
        return "it has no pgh_obj (obj_fk=None)"
    unrecorded = [
        f.name
        for f in tracked._meta.concrete_fields
        if not f.primary_key and f.attname not in event_model._pgh_tracked_fields
    ]
    if unrecorded:
        return f"it does not record {', '.join(unrecorded)} (track every field)"
    for operation, snapshot, hint in (
        ("INSERT", "NEW", "audit_stream.Snapshot() or AfterInsert()"),
        ("UPDATE", "NEW", "audit_stream.Snapshot() or AfterUpdate() without a condition"),
        ("DELETE", "OLD", "audit_stream.BeforeDelete()"),
    ):
        if not any(
            isinstance(e, DatabaseEvent)
            and operation in e.operations
            and e.snapshot == snapshot
            and (e.condition is None or isinstance(e, Snapshot))
            for e in event_model.pgh_events
        ):
            return f"no event records every {operation} ({snapshot} row): add {hint}"
    return None


def _labels(event_model: type[models.Model]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    from audit_stream.events import DatabaseEvent

    state, deletes = {BACKFILL_LABEL}, set()
    for event in event_model.pgh_events:
        if not isinstance(event, DatabaseEvent):
            continue
        if event.snapshot == "NEW":
            state.add(event.label)
        elif event.operations == ["DELETE"]:
            deletes.add(event.label)
    return tuple(sorted(state | deletes)), tuple(sorted(deletes))


def state_event_model(model: type[models.Model]) -> type[models.Model] | None:
    """The first event model of ``model`` that records its whole state at every change, if any."""
    for event_model in tracking.event_models_for(model):
        if _missing(event_model) is None:
            return event_model
    return None


def source_for(model: type[models.Model], *, using: str = DEFAULT_DB_ALIAS) -> StateSource:
    """The state source of ``model``.

    Raises:
        ValueError: If neither an event model nor the row log records every
            change of ``model``; the message names the missing event.
    """
    from audit_stream import rowlog

    model = model._meta.concrete_model
    event_models = [m for m in tracking.event_models_for(model) if not getattr(m, "_pgh_m2m_field", None)]
    event_model = state_event_model(model)
    if event_model is not None:
        states, deletes = _labels(event_model)
        return StateSource(model, event_model, states, deletes)
    if not event_models and rowlog.is_logged(model, using=using):
        return StateSource(model, None)
    if not event_models:
        raise ValueError(
            f"{model._meta.label} has no history to read as of a moment: track it with"
            " @audit_stream.track() (Snapshot() and BeforeDelete()) or log its table with"
            " manage.py initlogging."
        )
    reasons = "; ".join(f"{m._meta.label}: {_missing(m)}" for m in event_models)
    raise ValueError(f"as_of cannot rebuild {model._meta.label} from its history ({reasons}).")
