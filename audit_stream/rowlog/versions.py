"""A row as a row-log entry recorded it, rebuilt backwards from the live row (pgMemento's method)."""

from __future__ import annotations

import json

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, connections
from django.db import models as django_models

from audit_stream import exact, triggers
from audit_stream.exact import ExactDecoder
from audit_stream.rowlog.names import models_by_table, table_names

__all__ = ["model_of", "recorded_instance", "recorded_state"]

_CURRENT_ROW_SQL = "SELECT to_jsonb(t)::text FROM {table} AS t WHERE t.{pk}::text = %s"

# The entries of one row after a given one, newest first.
_LATER_ENTRIES_SQL = """
SELECT pgh_label, old_data::text FROM audit_stream_row_log
WHERE logged_table = ANY (%s) AND pgh_obj_id = %s AND pgh_id > %s
ORDER BY pgh_id DESC
"""

# A JSON row back into the table's row type: PostgreSQL does the conversions,
# and Django reads the result as a model instance.
_POPULATE_SQL = "SELECT * FROM jsonb_populate_record(NULL::{table}, %s::jsonb)"


def model_of(entry, *, using: str = DEFAULT_DB_ALIAS) -> type[django_models.Model] | None:
    """The model of the table ``entry`` was logged from (following renames), if there is one."""
    from audit_stream.models import DdlLog

    name, seen = entry.logged_table, set()
    names = models_by_table(using=using)
    while name not in names and name not in seen:
        seen.add(name)
        renamed = (
            DdlLog.objects.using(using)
            .filter(pgh_label="rename", former_name=name)
            .order_by("pgh_id")
            .values_list("logged_table", flat=True)
            .first()
        )
        if renamed is None:
            return None
        name = renamed
    return apps.get_model(names[name]) if name in names else None


def recorded_state(entry, *, using: str = DEFAULT_DB_ALIAS, model=None) -> dict | None:
    """The whole row as it was just after ``entry`` (before it, for a delete), as JSON values.

    pgMemento's method: start from the row as it is now and undo, newest
    first, every later entry of it (an update puts back its old values, a
    delete puts back the whole row, an insert means the row did not exist).
    """
    if entry.pgh_label == "delete":
        return entry.old_data
    model = model or model_of(entry, using=using)
    if model is None:
        return None
    meta = model._meta.concrete_model._meta
    state = None
    with connections[using].cursor() as cursor:
        cursor.execute(
            _CURRENT_ROW_SQL.format(
                table=triggers.quote_name(meta.db_table), pk=triggers.quote_name(meta.pk.column)
            ),
            [entry.pgh_obj_id],
        )
        row = cursor.fetchone()
        if row is not None:
            state = json.loads(row[0], cls=ExactDecoder)
        cursor.execute(_LATER_ENTRIES_SQL, [table_names(model, using=using), entry.pgh_obj_id, entry.pgh_id])
        for label, old in cursor.fetchall():
            old = json.loads(old, cls=ExactDecoder) if old is not None else None
            if label == "delete":
                state = old
            elif label == "update":
                state = {**(state or {}), **old}
            else:  # before its insert, the row did not exist
                state = None
    return state


def recorded_instance(entry, *, using: str | None = None) -> django_models.Model | None:
    """:func:`recorded_state` as an (unsaved) instance of the table's model."""
    using = using or DEFAULT_DB_ALIAS
    model = model_of(entry, using=using)
    state = recorded_state(entry, using=using, model=model) if model is not None else None
    if state is None:
        return None
    sql = _POPULATE_SQL.format(table=triggers.quote_name(model._meta.concrete_model._meta.db_table))
    rows = list(model._default_manager.db_manager(using).raw(sql, [exact.dumps(state)]))
    return rows[0] if rows else None
