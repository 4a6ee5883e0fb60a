"""Deleted objects: the last recorded state of each object gone, from which it can be restored."""

from __future__ import annotations

from django.db import models

from audit_stream import events, registry, rowlog
from audit_stream import revert as _revert
from audit_stream.models import RowLog
from audit_stream.triggers import quote_name

__all__ = ["deleted_events", "deleted_rows", "is_tracked", "revertible_event_models"]


def revertible_event_models(model):
    """The event models of ``model`` whose events can revert or restore it."""
    return [m for m in registry.event_models_for(model) if _revert.can_revert(m)]


def deleted_events(event_model, model, limit=500):
    """The last event of each object that no longer exists (its last recorded state).

    With delete events declared, the newest delete events are looked for in
    windows of ``pgh_id`` walking back from the newest event (1,000 ids, then
    twice as many each time), until ``limit`` are found whose object is gone
    and has no later event: the cost follows the page (and how rare deletes
    are), not the table, whatever the planner's statistics say. Without,
    every object's last event is read.
    """
    table, tracked, pk = (quote_name(event_model._meta.db_table), quote_name(model._meta.db_table),
                           quote_name(model._meta.pk.column))  # fmt: skip
    labels = events.delete_labels(event_model)
    if labels:
        sql = f"""
            SELECT e.* FROM {table} AS e
            WHERE e.pgh_id > %s AND e.pgh_id <= %s
              AND e.pgh_label = ANY(%s)
              AND NOT EXISTS (SELECT 1 FROM {tracked} AS t WHERE t.{pk} = e.pgh_obj_id)
              AND NOT EXISTS (SELECT 1 FROM {table} AS later
                              WHERE later.pgh_obj_id = e.pgh_obj_id AND later.pgh_id > e.pgh_id)
            ORDER BY e.pgh_id DESC
            LIMIT %s
        """
        upper = event_model.objects.aggregate(newest=models.Max("pgh_id"))["newest"]
        found, window = [], 1_000
        while upper is not None and upper > 0 and len(found) < limit:
            found += event_model.objects.raw(sql, [upper - window, upper, labels, limit - len(found)])
            upper, window = upper - window, window * 2
        return found
    sql = f"""
        SELECT DISTINCT ON (e.pgh_obj_id) e.*
        FROM {table} AS e
        WHERE NOT EXISTS (SELECT 1 FROM {tracked} AS t WHERE t.{pk} = e.pgh_obj_id)
        ORDER BY e.pgh_obj_id, e.pgh_id DESC
        LIMIT %s
    """
    return list(event_model.objects.raw(sql, [limit]))


def is_tracked(model) -> bool:
    """Whether ``@track`` records ``model`` (else only ``initlogging`` may log it)."""
    return bool(registry.event_models_for(model))


# The last entry of each deleted row of a logged table, when it is its delete.
_DELETED_ROWS_SQL = """
SELECT * FROM (
    SELECT DISTINCT ON (e.pgh_obj_id) e.*
    FROM audit_stream_row_log AS e
    WHERE e.logged_table = ANY (%s)
    ORDER BY e.pgh_obj_id, e.pgh_id DESC
) AS last
WHERE last.pgh_label = 'delete'
  AND NOT EXISTS (SELECT 1 FROM {table} AS t WHERE t.{pk}::text = last.pgh_obj_id)
LIMIT %s
"""


def deleted_rows(model, limit=500):
    """Rows of a logged table deleted and not re-created: their delete entries (restorable)."""
    sql = _DELETED_ROWS_SQL.format(
        table=quote_name(model._meta.db_table), pk=quote_name(model._meta.pk.column)
    )
    return list(RowLog.objects.raw(sql, [rowlog.table_names(model), limit]))
