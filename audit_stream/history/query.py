"""A QuerySet over the past: every table it reads is replaced by that table as of a moment.

``as_of(Product, when).filter(price__gt=10).order_by("name")`` compiles to::

    WITH "shop_product" AS (<the products at `when`, from their event table>)
    SELECT ... FROM "shop_product" WHERE "shop_product"."price" > 10 ORDER BY ...

A ``WITH`` query named like a table hides the table from the rest of the
statement, so Django's own SQL (filters, joins, ordering, aggregates, counts,
slices, pagination) runs unchanged on the historical rows, in one query. Every
table the query joins whose model has a history (:mod:`.states`) is replaced
the same way, so ``filter(shelf__name="A")`` and ``select_related("shelf")``
see the shelf as it was at the same moment; tables without history are read
live.

The instances are read-only (``save()`` and ``delete()`` raise), and their
foreign keys and many-to-many managers answer as of the same moment
(:mod:`.related`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.apps import apps
from django.db import models
from django.db.models.query import ModelIterable
from django.db.models.sql import Query
from django.db.models.sql.compiler import SQLCompiler

from audit_stream.history import states
from audit_stream.history.errors import ReadOnlyHistoryError
from audit_stream.history.related import freeze

__all__ = ["AsOfQuery", "ReadOnlyHistoryError", "as_of_queryset"]


def _tables() -> dict[str, type[models.Model]]:
    return {
        m._meta.db_table: m
        for m in apps.get_models(include_auto_created=True)
        if not m._meta.proxy and m._meta.managed
    }


class AsOfCompiler(SQLCompiler):
    """Compiles the query, then puts each table it reads as of the moment in front."""

    def as_sql(self, *args, **kwargs):
        sql, params = super().as_sql(*args, **kwargs)
        when = self.query.as_of
        main = self.query.model._meta.concrete_model
        tables = _tables()
        ctes, cte_params = [], []
        seen = set()
        for join in self.query.alias_map.values():
            table = join.table_name
            if table in seen:
                continue
            seen.add(table)
            model = tables.get(table)
            if model is None:
                continue
            try:
                source = states.source_for(model, using=self.connection.alias)
            except ValueError:
                if model is main:
                    raise
                continue  # a related model without history: read live
            body, body_params = source.sql(when, self.connection)
            ctes.append(f"{self.connection.ops.quote_name(table)} AS ({body})")
            cte_params += body_params
        if not ctes:
            return sql, params
        prefix = ""
        explain = self.query.explain_info
        if explain:  # EXPLAIN goes before the WITH
            prefix = self.connection.ops.explain_query_prefix(explain.format, **explain.options) + " "
            sql = sql.removeprefix(prefix)
        return f"{prefix}WITH {', '.join(ctes)} {sql}", (*cte_params, *params)


class AsOfQuery(Query):
    """A ``Query`` that reads its tables as of ``as_of``."""

    as_of: datetime | None = None

    def get_compiler(self, using=None, connection=None, elide_empty=True):
        from django.db import connections

        if using:
            connection = connections[using]
        return AsOfCompiler(self, connection, using, elide_empty)


class _AsOfIterable(ModelIterable):
    """Model instances, made read-only and resolving relations as of the same moment."""

    def __iter__(self):
        when = self.queryset.query.as_of
        for obj in super().__iter__():
            yield freeze(obj, when, as_of_queryset)


def _refuse(self, *args: Any, **kwargs: Any):
    raise ReadOnlyHistoryError(
        "This QuerySet reads history (audit_stream.as_of): it cannot write. Query the model's"
        " live rows to change them, or revert to a version (audit_stream.revert)."
    )


class AsOfQuerySetMixin:
    """Refuses writes; yields frozen instances."""

    def __init__(self, model=None, query=None, using=None, hints=None):
        super().__init__(model, query, using, hints)
        if self._iterable_class is ModelIterable:
            self._iterable_class = _AsOfIterable

    @property
    def as_of(self) -> datetime:
        """The moment this QuerySet reads."""
        return self.query.as_of

    update = delete = create = get_or_create = update_or_create = _refuse
    bulk_create = bulk_update = _update = _raw_delete = _refuse
    aupdate = adelete = acreate = aget_or_create = aupdate_or_create = _refuse
    abulk_create = abulk_update = _refuse


_classes: dict[type, type] = {}


def _as_of_class(cls: type[models.QuerySet]) -> type[models.QuerySet]:
    if issubclass(cls, AsOfQuerySetMixin):
        return cls
    if cls not in _classes:
        _classes[cls] = type(f"AsOf{cls.__name__}", (AsOfQuerySetMixin, cls), {})
    return _classes[cls]


def as_of_queryset(queryset: models.QuerySet, when: datetime) -> models.QuerySet:
    """``queryset`` (its filters, ordering, ...) over the rows as they were at ``when``."""
    model = queryset.model._meta.concrete_model
    states.source_for(model, using=queryset.db)  # fail now, with the reason, not at evaluation
    query = queryset.query.chain(AsOfQuery)
    query.as_of = when
    cls = _as_of_class(type(queryset))
    return cls(model=queryset.model, query=query, using=queryset._db, hints=queryset._hints)
