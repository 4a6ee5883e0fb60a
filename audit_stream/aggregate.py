"""``AggregateEvent``: the events that reference an object, across event tables, with diffs.

``AggregateEvent.objects.target(obj).across(*event_models)`` compiles to::

    WITH "audit_stream_aggregateevent" AS (
        SELECT ... FROM <event table 1> WHERE pgh_obj_id = %s          -- the object's own events
        UNION ALL
        SELECT ... FROM <event table 2> WHERE customer_id = %s         -- events whose rows point to it
    )
    SELECT ... FROM "audit_stream_aggregateevent" WHERE <the QuerySet's filters> ORDER BY ...

A sliced QuerySet (a page: ``[:50]``, ``Paginator``, ``first()``) costs its
page, not the object's history: it finds the page first, on the events' plain
columns (no ``pgh_data``, no diff), then computes ``pgh_data`` and ``pgh_diff``
for the page's rows alone, each diff against its one previous event (an index
lookup on ``(pgh_obj, pgh_id)``)::

    WITH "_pgh_page" AS (
        WITH "audit_stream_aggregateevent" AS (<the branches above, plain columns only>)
        SELECT pgh_table, pgh_id FROM "audit_stream_aggregateevent" WHERE ... ORDER BY ... LIMIT ...
    ), "audit_stream_aggregateevent" AS (
        SELECT ..., pgh_data, pgh_diff FROM <event table 1> WHERE pgh_id IN (<its rows of the page>)
        UNION ALL ...
    )
    SELECT ... FROM "audit_stream_aggregateevent" WHERE ... ORDER BY ...

A query whose filters or ordering read ``pgh_data`` or ``pgh_diff`` computes
them for every event of the target first, as does an unsliced one; a query
that does not read them (``count()``) never computes them.

As in django-pghistory, an event *references* ``obj`` through ``pgh_obj`` or
through any foreign key the event model copied from its tracked model (so
``target(user)`` also returns the events of every tracked model whose rows
point to that user, including event models without ``pgh_obj``). ``target()``
takes an object, a list of objects of one model, or a QuerySet. Filters,
ordering, slicing, counting and pagination work as on any QuerySet.

Each row's ``pgh_diff`` is ``{column: [old, new]}`` against the previous event
of the same object (``pgh_obj``) in the same event table, computed with the
change feed's SQL function (``_audit_stream_diff``); it is ``None`` for an
object's first event in a table and for event models without ``pgh_obj``
(django-pghistory's semantics). The diff is computed in one place,
:func:`_diff_sql`.

Fields of a :class:`~audit_stream.models.BaseAggregateEvent` subclass that do
not start with ``pgh_`` are read from the event's context metadata, by field
name (``user = models.ForeignKey(User, ...)`` reads ``metadata["user"]``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import connections, models
from django.db.models.sql import Query
from django.db.models.sql.compiler import SQLCompiler

from audit_stream import events, keys, masking, registry

# Kept here for migrations written before audit_stream.exact existed.
from audit_stream.exact import ExactDecoder

__all__ = ["AggregateEventQuery", "AggregateEventQuerySet", "ExactDecoder"]


# Columns of an event row that are not the tracked object's state.
_PGH_COLUMNS = ["pgh_id", "pgh_created_at", "pgh_label", "pgh_xid", "pgh_obj_id", "pgh_context_id"]


@dataclass(frozen=True)
class _Target:
    """What ``target()`` / ``target_pk()`` asked for.

    ``objects`` is a list of instances, or a QuerySet (read as a subquery);
    ``pks`` is set instead by ``target_pk()``, which follows ``pgh_obj`` only.
    """

    model: type[models.Model]
    objects: Any = None
    pks: tuple = ()
    pgh_obj_only: bool = False


def _referencing_fields(event_model, target: _Target) -> list[models.ForeignKey]:
    """The foreign keys of ``event_model`` that can point to the target's model."""
    if keys.is_composite(target.model):
        # No foreign key can point to a composite key: pgh_obj_id holds the object id (audit_stream.keys).
        own = event_model.pgh_tracked_model._meta.concrete_model is target.model
        field = event_model._meta.get_field("pgh_obj_id") if own and event_model._pgh_has_obj else None
        return [field] if field is not None else []
    fields = [
        f
        for f in event_model._meta.concrete_fields
        if f.many_to_one
        and isinstance(f.related_model, type)
        and f.related_model._meta.concrete_model is target.model
    ]
    if target.pgh_obj_only:
        fields = [f for f in fields if f.name == "pgh_obj"]
    return fields


def _where_sql(
    fields: list[models.ForeignKey], target: _Target, connection, alias: str = "x"
) -> tuple[str, list]:
    """``x.<fk> IN (...) OR ...``: the rows of one event table (as ``alias``) that point to the target."""
    clauses, params = [], []
    quote = connection.ops.quote_name
    for field in fields:
        column = f"{alias}.{quote(field.column)}"
        if not field.many_to_one:  # a composite key's object id
            objects = target.pks if target.objects is None else [o.pk for o in target.objects]
            values = [keys.object_id(target.model, pk) for pk in objects]
            clauses.append(f"{column} = ANY(%s)")
            params.append(values)
            continue
        attname = field.target_field.attname
        if isinstance(target.objects, models.QuerySet):
            subquery = target.objects.order_by().values_list(attname).query
            sql, sub_params = subquery.get_compiler(connection=connection).as_sql()
            clauses.append(f"{column} IN ({sql})")
            params += sub_params
            continue
        values = list(target.pks) if target.objects is None else [getattr(o, attname) for o in target.objects]
        values = [field.get_db_prep_value(v, connection) for v in values if v is not None]
        if values:
            clauses.append(f"{column} IN ({', '.join(['%s'] * len(values))})")
            params += values
    return " OR ".join(clauses) or "FALSE", params


def _delete_labels(event_model) -> list[str]:
    return events.delete_labels(event_model)


def _mask_sql(sql: str, params: list, event_model, how: str) -> tuple[str, list]:
    """``sql`` wrapped in the masking expression ``how`` for ``event_model``'s masked columns, if any.

    The event tables hold clear values; every row read from them here shows the
    mask instead (:mod:`audit_stream.masking`, the same SQL as the fold's). The
    branch's ``pgh_data`` is read *digested* (masked values as keyed digests),
    so the diff still tells whether a masked value changed.
    """
    masked = masking.columns_of(event_model)
    if not masked:
        return sql, params
    mask = masking.MaskSql.positional()
    return getattr(mask, how)(sql), [*params, *mask.params(masked)]


def _diff_sql(event_model) -> tuple[str, list]:
    """The SQL of ``pgh_diff`` for one event table's branch: the one place it is computed.

    ``e`` is the branch's row (``e.pgh_data`` its tracked columns as JSONB,
    ``e.pgh_before`` those of the previous event, :func:`_before_sql`). The
    previous state is the previous event of the same object in the same table
    (``pgh_id`` order: the order the changes happened). An object's first event
    has no previous state: ``NULL``, as in django-pghistory (the change feed's
    ``Change.diff`` lists every column there instead; that is the feed's own
    contract). Event models without ``pgh_obj`` have no object to follow: ``NULL``.
    """
    if not event_model._pgh_has_obj:
        return "NULL::jsonb", []
    before = "e.pgh_before"  # the previous event's tracked columns (see _before_sql)
    return _mask_sql(
        f"CASE WHEN {before} IS NULL THEN NULL"
        f" ELSE _audit_stream_diff({before}, e.pgh_data, e.pgh_label = ANY(%s::text[])) END",
        [_delete_labels(event_model)],
        event_model,
        "shown_pairs",
    )


def _before_sql(event_model, where: tuple[str, list], connection) -> tuple[str, list]:
    """A lateral subquery: the tracked columns (JSONB) of the event before ``x``, as ``pgh_before``.

    The previous event of the same object in the same table, among the
    target's (``where``: the target's condition on the table aliased ``p``):
    what ``lag() OVER (PARTITION BY pgh_obj_id ORDER BY pgh_id)`` over the
    target's events of the table returns, found for one row by one backward
    step of the ``(pgh_obj, pgh_id)`` index, so that a page pays for its rows.
    """
    table = connection.ops.quote_name(event_model._meta.db_table)
    data, data_params = _mask_sql("to_jsonb(p) - %s::text[]", [_PGH_COLUMNS], event_model, "digested")
    return (
        f"SELECT {data} AS pgh_before FROM {table} AS p"
        f" WHERE p.pgh_obj_id = x.pgh_obj_id AND p.pgh_id < x.pgh_id AND ({where[0]})"
        " ORDER BY p.pgh_id DESC LIMIT 1",
        [*data_params, *where[1]],
    )


def _metadata_sql(field: models.Field, connection, has_context: bool) -> str:
    """An extra field of a custom aggregate model, read from the context metadata by name."""
    db_type = field.db_type(connection)
    if not has_context:
        return f"NULL::{db_type}"
    if isinstance(field, models.JSONField):
        return f"ctx.metadata -> {_literal(field.name)}"
    return f"(ctx.metadata ->> {_literal(field.name)})::{db_type}"


def _literal(name: str) -> str:
    return "'" + name.replace("'", "''") + "'"


#: The columns computed from the whole event row (the others are read from its plain columns).
_COMPUTED = ("pgh_data", "pgh_diff")


def _columns(aggregate_model, event_model, connection, computed: set[str]) -> list[tuple[str, str, list]]:
    """``(column, sql, params)`` for each column of ``aggregate_model``, from one event table's row ``e``.

    The ``_COMPUTED`` columns not in ``computed`` are ``NULL``: the query never reads them.
    """
    table = event_model._meta.db_table
    own = {
        "pgh_key": ("%s::text || ':' || e.pgh_id", [table]),
        "pgh_id": ("e.pgh_id", []),
        "pgh_created_at": ("e.pgh_created_at", []),
        "pgh_label": ("e.pgh_label", []),
        "pgh_table": ("%s::text", [table]),
        "pgh_model": ("%s::text", [event_model.pgh_tracked_model._meta.label_lower]),
        "pgh_obj_id": ("e.pgh_obj_id::text" if event_model._pgh_has_obj else "NULL::text", []),
        "pgh_context_id": ("e.pgh_context_id" if event_model._pgh_has_context else "NULL::uuid", []),
        "pgh_data": _mask_sql("e.pgh_data", [], event_model, "shown"),
        "pgh_diff": _diff_sql(event_model),
    }
    for column in set(_COMPUTED) - computed:
        own[column] = ("NULL::jsonb", [])
    columns = []
    for field in aggregate_model._meta.concrete_fields:
        if field.column in own:
            sql, params = own[field.column]
        else:
            sql, params = _metadata_sql(field, connection, event_model._pgh_has_context), []
        columns.append((field.column, sql, params))
    return columns


def _empty_sql(aggregate_model, connection) -> str:
    """A branch with the aggregate's columns and no rows (no event model references the target)."""
    quote = connection.ops.quote_name
    return (
        "SELECT "
        + ", ".join(
            f"NULL::{f.db_type(connection)} AS {quote(f.column)}"
            for f in aggregate_model._meta.concrete_fields
        )
        + " WHERE FALSE"
    )


#: BaseAggregateEvent's ordering.
_TIME_ORDER = ("pgh_created_at", "pgh_table", "pgh_id")

#: The CTE of a page's keys (``pgh_table``, ``pgh_id``), when the page is found first.
_PAGE = "_pgh_page"


def _computed_in(sql: str, connection) -> set[str]:
    """The ``_COMPUTED`` columns ``sql`` names (Django quotes every column it selects, filters, sorts by)."""
    return {column for column in _COMPUTED if connection.ops.quote_name(column) in sql}


class AggregateEventCompiler(SQLCompiler):
    """Compiles the QuerySet's own SQL after a CTE of the target's events (or of its page's)."""

    def as_sql(self, with_limits=True, with_col_aliases=False):
        query = self.query
        if not query.order_by and query.default_ordering and not query.get_meta().ordering:
            # A subclass whose Meta does not inherit the base's ordering: rows in time order all the
            # same (the page is chosen in it; before pages, lag()'s sort gave that order by chance).
            query.order_by = tuple(_TIME_ORDER)
        page = self._page_sql() if with_limits and self.query.is_sliced else None
        sql, params = super().as_sql(with_limits and page is None, with_col_aliases)
        name = self.connection.ops.quote_name(self.query.model._meta.db_table)
        computed = _computed_in(sql, self.connection)
        if page is None:
            cte, cte_params = self.query.cte_sql(self.connection, computed)
            return f"WITH {name} AS ({cte}) {sql}", (*cte_params, *params)
        # The page is in _PAGE already: the outer query sorts its rows, and slices nothing.
        rows, rows_params = self.query.cte_sql(self.connection, computed, page=True)
        return f"WITH {_PAGE} AS ({page[0]}), {name} AS ({rows}) {sql}", (*page[1], *rows_params, *params)

    def _page_sql(self) -> tuple[str, tuple] | None:
        """The page's keys, found on the plain columns; ``None`` if the page needs computed columns."""
        query = self.query
        if query.distinct or query.combinator or query.group_by is not None:
            return None
        keys = query.clone()
        keys.select_related = False
        keys.clear_select_clause()
        keys.add_fields(["pgh_table", "pgh_id"])
        sql, params = SQLCompiler(keys, self.connection, self.using, self.elide_empty).as_sql()
        if _computed_in(sql, self.connection):  # filtered or sorted by pgh_data or pgh_diff
            return None
        name = self.connection.ops.quote_name(query.model._meta.db_table)
        cte, cte_params = query.cte_sql(self.connection, computed=set())
        return f"WITH {name} AS ({cte}) {sql}", (*cte_params, *params)


class AggregateEventQuery(Query):
    """A Query that carries its target and event models, and compiles with a CTE."""

    target: _Target | None = None
    event_models: tuple = ()

    def get_compiler(self, using=None, connection=None, elide_empty=True):
        if using:
            connection = connections[using]
        return AggregateEventCompiler(self, connection, using, elide_empty)

    def referencing_models(self) -> list[type[models.Model]]:
        """The event models to aggregate: those of ``across()``, else every one that references the target.

        Raises:
            ValueError: Without a target, or when an event model of ``across()``
                cannot reference it.
        """
        if self.target is None:
            raise ValueError(
                "AggregateEvent needs a target: use AggregateEvent.objects.target(obj) (an object, a list"
                " or a QuerySet of one model) to aggregate the events that reference it."
            )
        if not self.event_models:
            candidates = sorted(registry.event_models.values(), key=lambda m: m._meta.db_table)
            return [m for m in candidates if _referencing_fields(m, self.target)]
        for event_model in self.event_models:
            if event_model not in registry.event_models.values():
                raise ValueError(
                    f"across() takes event models; {event_model!r} is not one"
                    " (e.g. pass ProductEvent, not Product)."
                )
            if not _referencing_fields(event_model, self.target):
                how = "pgh_obj" if self.target.pgh_obj_only else "pgh_obj or a tracked foreign key"
                raise ValueError(
                    f"{event_model._meta.label} cannot reference {self.target.model._meta.label}: it has no"
                    f" foreign key to it ({how}). Pass event models that do to across(), or leave"
                    " across() out to aggregate every event model that references the target."
                )
        return list(self.event_models)

    def cte_sql(self, connection, computed: set[str], page: bool = False) -> tuple[str, list]:
        """The CTE's body: one ``SELECT`` per event table, joined by ``UNION ALL``.

        Each branch reads the target's events of its table, or with ``page``
        those of the page (the ``_PAGE`` CTE). Of the ``_COMPUTED`` columns, it
        computes those in ``computed``; the others are ``NULL``.
        """
        event_models = self.referencing_models()
        if not event_models:
            return _empty_sql(self.model, connection), []
        quote = connection.ops.quote_name
        branches, params = [], []
        for event_model in event_models:
            table = event_model._meta.db_table
            fields = _referencing_fields(event_model, self.target)
            columns = _columns(self.model, event_model, connection, computed)
            needs_context = event_model._pgh_has_context and any(
                not column.startswith("pgh_") for column, _, _ in columns
            )
            select = ", ".join(f"{sql} AS {quote(column)}" for column, sql, _ in columns)
            context_join = (
                " LEFT JOIN audit_stream_context AS ctx ON ctx.id = e.pgh_context_id" if needs_context else ""
            )
            row, row_params, before, before_params = "x.*", [], "", []
            if computed:
                # Masked values read as keyed digests: the diff still tells whether one changed.
                data, data_params = _mask_sql(
                    "to_jsonb(x) - %s::text[]", [_PGH_COLUMNS], event_model, "digested"
                )
                row += f", {data} AS pgh_data"
                row_params += data_params
            if "pgh_diff" in computed and event_model._pgh_has_obj:
                sql, before_params = _before_sql(
                    event_model, _where_sql(fields, self.target, connection, alias="p"), connection
                )
                row += ", b.pgh_before"
                before = f" LEFT JOIN LATERAL ({sql}) AS b ON TRUE"
            if page:
                where = f"x.pgh_id IN (SELECT pgh_id FROM {_PAGE} WHERE pgh_table = %s)"
                where_params = [table]
            else:
                where, where_params = _where_sql(fields, self.target, connection)
            # OFFSET 0 keeps the rows' selection below the lateral lookup: one lookup per selected row.
            selected = f"SELECT * FROM {quote(table)} AS x WHERE {where} OFFSET 0"
            rows = f"SELECT {row} FROM ({selected}) AS x{before}"
            branches.append(f"SELECT {select} FROM ({rows}) AS e{context_join}")
            params += [p for _, _, column_params in columns for p in column_params]
            params += [*row_params, *where_params, *before_params]
        return " UNION ALL ".join(branches), params


def _target_model(objs) -> tuple[type[models.Model], Any]:
    """The concrete model of ``target()``'s argument, and the argument as instances or a QuerySet."""
    if isinstance(objs, models.QuerySet):
        return objs.model._meta.concrete_model, objs
    if isinstance(objs, models.Model):
        return type(objs)._meta.concrete_model, [objs]
    if isinstance(objs, Iterable) and not isinstance(objs, (str, bytes)):
        objs = list(objs)
        kinds = {type(o)._meta.concrete_model for o in objs if isinstance(o, models.Model)}
        if len(kinds) == 1 and all(isinstance(o, models.Model) for o in objs):
            return kinds.pop(), objs
        if not objs:
            raise ValueError("target() got an empty list: pass at least one object, or an (empty) QuerySet.")
        raise ValueError(
            "target() takes objects of one model: "
            + ", ".join(sorted(k._meta.label for k in kinds) or ["not model instances"])
            + " were given. Aggregate each model with its own query."
        )
    raise TypeError(
        f"target() takes a model instance, a list of them or a QuerySet, not {type(objs).__name__}."
    )


class AggregateEventQuerySet(models.QuerySet):
    """QuerySet over the events that reference an object, across event tables."""

    def __init__(self, model=None, query=None, using=None, hints=None):
        super().__init__(model, query or AggregateEventQuery(model), using, hints)

    def target(self, obj: models.Model | Iterable[models.Model] | models.QuerySet) -> AggregateEventQuerySet:
        """The events that reference ``obj``: through ``pgh_obj`` or a copied foreign key.

        ``obj`` is an object, a list of objects of one model or a QuerySet.
        """
        model, objects = _target_model(obj)
        return self._with(target=_Target(model=model, objects=objects))

    def target_pk(self, model: type[models.Model], pk: Any) -> AggregateEventQuerySet:
        """The object's own events (through ``pgh_obj``), by primary key: also after it was deleted."""
        return self._with(target=_Target(model=model._meta.concrete_model, pks=(pk,), pgh_obj_only=True))

    def across(self, *event_models: type[models.Model]) -> AggregateEventQuerySet:
        """Only these event models (by default, every event model that references the target).

        Raises:
            ValueError: If one of them cannot reference the target.
        """
        return self._with(event_models=tuple(event_models))

    def _with(self, **attrs: Any) -> AggregateEventQuerySet:
        clone = self._chain()
        for name, value in attrs.items():
            setattr(clone.query, name, value)
        if clone.query.target is not None and clone.query.event_models:
            clone.query.referencing_models()  # a bad across() fails here, not at evaluation
        return clone
