"""Admin changelists of history that cost a page, whatever the history's size.

History tables only grow, and Django's changelist defaults read all of them:
``COUNT(*)`` for the paginator, ``SELECT DISTINCT`` for each filter of the
sidebar, a join (or a query per row) for each foreign key shown. Here:

* :class:`EstimatedPaginator` counts exactly up to :data:`EXACT_COUNT` rows
  and takes PostgreSQL's estimate of the filtered query beyond;
* the filters offer choices known without reading the table (the tracked
  models and their declared labels);
* an event's object is shown from one lookup per page, never joined: the
  events of a deleted object stay listed.
"""

from __future__ import annotations

import json

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import connections
from django.utils.functional import cached_property

__all__ = [
    "EXACT_COUNT",
    "ChangeFilters",
    "EstimatedPaginator",
    "EventChangeList",
    "event_label_filter",
    "row_log_label_filter",
    "row_log_table_filter",
]

#: Rows counted exactly by a changelist's paginator; beyond, the planner's estimate.
EXACT_COUNT = 10_000


class EstimatedPaginator(Paginator):
    """A paginator whose count reads at most ``EXACT_COUNT + 1`` rows.

    Past that, the count is the planner's estimate of the filtered query
    (``EXPLAIN``), never below ``EXACT_COUNT + 1``: page links stay usable and
    the first pages (those an operator reads) stay exact.
    """

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        exact = queryset.order_by()[: EXACT_COUNT + 1].count()
        if exact <= EXACT_COUNT:
            return exact
        sql, params = queryset.order_by().query.sql_with_params()
        with connections[queryset.db].cursor() as cursor:
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
            plan = cursor.fetchone()[0]
        plan = json.loads(plan) if isinstance(plan, str) else plan
        return max(int(plan[0]["Plan"]["Plan Rows"]), exact)


class _ChoicesFilter(admin.SimpleListFilter):
    """A filter on one field whose choices come from code, not from ``SELECT DISTINCT``."""

    field = ""

    def choices_for(self, request, model_admin) -> list[str]:
        raise NotImplementedError

    def lookups(self, request, model_admin):
        return [(value, value) for value in self.choices_for(request, model_admin)]

    def queryset(self, request, queryset):
        value = self.value()
        return queryset.filter(**{self.field: value}) if value else queryset


class _ChangeModelFilter(_ChoicesFilter):
    title = "model"
    parameter_name = field = "model"

    def choices_for(self, request, model_admin):
        from audit_stream.dashboard import queries

        return queries.tracked_models()


class _ChangeLabelFilter(_ChoicesFilter):
    title = "label"
    parameter_name = field = "label"

    def choices_for(self, request, model_admin):
        from audit_stream.dashboard import queries

        return queries.event_labels()


#: The Change admin's filters: models and labels as declared.
ChangeFilters = [_ChangeModelFilter, _ChangeLabelFilter]


def event_label_filter(event_model) -> type[admin.SimpleListFilter]:
    """A ``pgh_label`` filter offering the labels ``event_model`` declares."""
    labels = sorted({event.label for event in getattr(event_model, "pgh_events", ())})
    return type(
        "EventLabelFilter",
        (_ChoicesFilter,),
        {
            "title": "label",
            "parameter_name": "pgh_label",
            "field": "pgh_label",
            "choices_for": lambda self, request, model_admin: labels,
        },
    )


def row_log_label_filter() -> type[admin.SimpleListFilter]:
    """The row log's ``pgh_label`` filter: insert, update, delete."""
    return type(
        "RowLogLabelFilter",
        (_ChoicesFilter,),
        {
            "title": "label",
            "parameter_name": "pgh_label",
            "field": "pgh_label",
            "choices_for": lambda self, request, model_admin: ["insert", "update", "delete"],
        },
    )


def row_log_table_filter() -> type[admin.SimpleListFilter]:
    """The row log's ``logged_table`` filter: the tables ``initlogging`` logs."""

    def choices_for(self, request, model_admin):
        from audit_stream.models import LoggedTable

        tables = LoggedTable.objects.order_by("schema_name", "table_name")
        return [f"{t.schema_name}.{t.table_name}" for t in tables]

    return type(
        "RowLogTableFilter",
        (_ChoicesFilter,),
        {"title": "logged table", "parameter_name": "logged_table", "field": "logged_table",
         "choices_for": choices_for},
    )  # fmt: skip


class EventChangeList(ChangeList):
    """An event model's changelist: each row's object looked up once per page, never joined."""

    def get_results(self, request):
        super().get_results(request)
        self.result_list = list(self.result_list)
        if not any(f.name == "pgh_obj" for f in self.model._meta.fields):
            return
        tracked = self.model._meta.get_field("pgh_obj").related_model
        ids = {event.pgh_obj_id for event in self.result_list}
        objects = tracked._default_manager.in_bulk([i for i in ids if i is not None])
        for event in self.result_list:
            event._pgh_obj_found = objects.get(event.pgh_obj_id)
