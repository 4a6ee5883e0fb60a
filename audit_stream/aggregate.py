"""``AggregateEvent``: one object's events across event tables, with diffs, as a QuerySet.

``AggregateEvent.objects.target(obj).across(*event_models)`` compiles to::

    WITH "audit_stream_aggregateevent" AS (
        SELECT ... FROM <event table 1> WHERE pgh_obj_id = %s   -- (pgh_obj, pgh_id) index
        UNION ALL
        SELECT ... FROM <event table 2> WHERE pgh_obj_id = %s
    )
    SELECT ... FROM "audit_stream_aggregateevent" WHERE <the QuerySet's filters> ORDER BY ...

so filters (``pgh_label``, ``pgh_created_at__gte``, ``pgh_context__metadata__user``),
ordering, slicing, counting and pagination work as on any QuerySet, and one
object's history is an index scan per event table. ``pgh_diff`` is computed
for the returned rows only, by the outer query (audit_stream.aggregate_diff).
"""

from __future__ import annotations

import json
from decimal import Decimal

from django.db import models
from django.db.models.sql import Query
from django.db.models.sql.compiler import SQLCompiler

from audit_stream import aggregate_diff

__all__ = ["AggregateEventQuerySet", "ExactDecoder"]


class ExactDecoder(json.JSONDecoder):
    """Reads JSON numbers with a fraction as ``Decimal``: recorded prices stay 10.00, not 10.0."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{"parse_float": Decimal, **kwargs})


_PGH_COLUMNS = ["pgh_id", "pgh_created_at", "pgh_label", "pgh_xid", "pgh_obj_id", "pgh_context_id"]

# One branch per event table. pgh_diff is not here: the outer query computes
# it for the rows it returns (audit_stream.aggregate_diff).
_BRANCH = """
SELECT %s::text || ':' || e.pgh_id AS pgh_key, e.pgh_id, e.pgh_created_at, e.pgh_label,
       %s::text AS pgh_table, %s::text AS pgh_model, {object_id} AS pgh_obj_id,
       {context_id} AS pgh_context_id, e.pgh_data
FROM (SELECT x.*, to_jsonb(x) - %s::text[] AS pgh_data FROM {table} AS x {where}) AS e
"""


class AggregateEventCompiler(SQLCompiler):
    def as_sql(self, *args, **kwargs):
        sql, params = super().as_sql(*args, **kwargs)
        cte, cte_params = self.query.cte_sql(self.connection)
        name = self.connection.ops.quote_name(self.query.model._meta.db_table)
        event_models = self.query.event_models_used()
        sql, params = aggregate_diff.replace_diff_column(self, sql, params, name, event_models)
        return f"WITH {name} AS ({cte}) {sql}", (*cte_params, *params)


class AggregateEventQuery(Query):
    """A Query that carries its target and event models, and compiles with a CTE."""

    target = None  # (model, pk) or None
    event_models: tuple = ()

    def get_compiler(self, using=None, connection=None, elide_empty=True):
        from django.db import connections

        if using:
            connection = connections[using]
        return AggregateEventCompiler(self, connection, using, elide_empty)

    def event_models_used(self) -> list:
        """The event models the CTE reads."""
        from audit_stream import tracking

        event_models = list(self.event_models) or (
            tracking.event_models_for(self.target[0])
            if self.target is not None
            else sorted(tracking._event_models.values(), key=lambda m: m._meta.db_table)
        )
        if self.target is not None:
            event_models = [m for m in event_models if m._pgh_has_obj]
        return event_models

    def cte_sql(self, connection) -> tuple[str, list]:
        quote = connection.ops.quote_name
        event_models = self.event_models_used()
        if not event_models:
            return (
                "SELECT NULL::text AS pgh_key, NULL::bigint AS pgh_id, NULL::timestamptz AS pgh_created_at,"
                " NULL::text AS pgh_label, NULL::text AS pgh_table, NULL::text AS pgh_model,"
                " NULL::text AS pgh_obj_id, NULL::uuid AS pgh_context_id, NULL::jsonb AS pgh_data"
                " WHERE FALSE",
                [],
            )
        branches, params = [], []
        for model in event_models:
            table = model._meta.db_table
            where, where_params = "", []
            if self.target is not None:
                where, where_params = "WHERE x.pgh_obj_id = %s", [self.target[1]]
            branches.append(
                _BRANCH.format(
                    table=quote(table),
                    where=where,
                    object_id="e.pgh_obj_id::text" if model._pgh_has_obj else "NULL::text",
                    context_id="e.pgh_context_id" if model._pgh_has_context else "NULL::uuid",
                )
            )
            label = model.pgh_tracked_model._meta.label_lower
            params += [table, table, label, _PGH_COLUMNS, *where_params]
        return " UNION ALL ".join(branches), params


class AggregateEventQuerySet(models.QuerySet):
    """QuerySet over events aggregated across event tables."""

    def __init__(self, model=None, query=None, using=None, hints=None):
        super().__init__(model, query or AggregateEventQuery(model), using, hints)

    def target(self, obj: models.Model) -> AggregateEventQuerySet:
        """Only the events of ``obj`` (also after it was deleted)."""
        clone = self._chain()
        clone.query.target = (type(obj)._meta.concrete_model, obj.pk)
        return clone

    def target_pk(self, model: type[models.Model], pk) -> AggregateEventQuerySet:
        """Only the events of the object of ``model`` with this primary key (e.g. a deleted one)."""
        clone = self._chain()
        clone.query.target = (model._meta.concrete_model, pk)
        return clone

    def across(self, *event_models) -> AggregateEventQuerySet:
        """Only these event models (all of the target's by default)."""
        clone = self._chain()
        clone.query.event_models = tuple(event_models)
        return clone
