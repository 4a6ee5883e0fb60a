"""Admin: object history with revert and restore, contexts, events, the change feed, webhooks.

``VersionModelAdmin`` (or ``VersionAdminMixin``) gives a model's admin a
per-object history page (time, label, user and context, field-level diffs),
"Revert to this version" with a confirmation page, and "Restore" for deleted
objects::

    from audit_stream.admin import VersionModelAdmin

    admin.site.register(Product, VersionModelAdmin)
"""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import models
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from audit_stream import changelists, events, masking, rowlog, tracking
from audit_stream import revert as _revert
from audit_stream.admin_undo import UndoContextMixin
from audit_stream.exact import dumps as exact_dumps
from audit_stream.history import as_of
from audit_stream.history.related import m2m_event_model
from audit_stream.history.states import source_for
from audit_stream.models import (
    AggregateEvent,
    Change,
    Context,
    DdlLog,
    RowLog,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookMessage,
)
from audit_stream.triggers import quote_name
from audit_stream.webhooks import delivery, filters

__all__ = ["VersionAdminMixin", "VersionModelAdmin"]


class ReadOnlyAdmin(admin.ModelAdmin):
    """History is append-only: view, never add, change or delete."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def _exact_json(field_name: str):
    """An admin column or read-only field showing a JSON field with every digit (``audit_stream.exact``)."""

    @admin.display(description=field_name)
    def show(self, obj) -> str:
        return exact_dumps(getattr(obj, field_name))

    return show


@admin.register(Context)
class ContextAdmin(UndoContextMixin, ReadOnlyAdmin):
    list_display = ["id", "created_at", "updated_at", "metadata_json", "undo_link"]
    exclude = ["metadata"]
    readonly_fields = ["metadata_json"]
    metadata_json = _exact_json("metadata")
    search_fields = ["id"]
    date_hierarchy = "created_at"
    ordering = ["-created_at", "-id"]  # newest first (ids are random UUIDs)
    change_form_template = "audit_stream/admin/context_change_form.html"

    @admin.display(description="undo")
    def undo_link(self, obj):
        url = reverse("admin:audit_stream_context_undo", args=[obj.pk])
        return format_html('<a href="{}">Undo this request</a>', url)


@admin.register(Change)
class ChangeAdmin(ReadOnlyAdmin):
    list_display = ["id", "created_at", "model", "object_id", "label", "diff_json", "context_link"]
    exclude = ["diff", "snapshot", "mask_digests"]
    readonly_fields = ["diff_json", "snapshot_json"]
    diff_json = _exact_json("diff")
    snapshot_json = _exact_json("snapshot")
    # Filters and counts that cost a page at any size (audit_stream.changelists).
    list_filter = changelists.ChangeFilters
    search_fields = ["=object_id"]
    search_help_text = "An object's id (exact)."
    show_full_result_count = False
    paginator = changelists.EstimatedPaginator

    def get_search_results(self, request, queryset, search_term):
        """An object id, looked up per tracked model: the (model, object_id, event_id) index serves it."""
        term = search_term.strip()
        if not term:
            return queryset, False
        from audit_stream.dashboard import queries

        return queryset.filter(model__in=queries.tracked_models(), object_id=term), False

    @admin.display(description="context")
    def context_link(self, obj):
        return _context_link(obj.context_id)


def _context_link(context_id):
    """A link to a context's admin page (where it can be undone), or a dash."""
    if context_id is None:
        return "—"
    url = reverse("admin:audit_stream_context_change", args=[context_id])
    return format_html('<a href="{}">{}</a>', url, str(context_id)[:8])


def _masked_json(field_name: str):
    """A row log entry's ``old_data`` or ``new_data``, with its table's masked columns masked."""

    @admin.display(description=field_name)
    def show(self, obj) -> str:
        model = rowlog.model_of(obj)
        name = model._meta.label_lower if model is not None else obj.logged_table
        masked = masking.row_log_columns({obj.logged_table: name}).get(name, ())
        value = getattr(obj, field_name)
        if value is None:
            return exact_dumps(value)
        return exact_dumps({k: masking.mask_value(v) if k in masked else v for k, v in value.items()})

    return show


@admin.register(RowLog)
class RowLogAdmin(ReadOnlyAdmin):
    list_display = ["pgh_id", "pgh_created_at", "logged_table", "pgh_obj_id", "pgh_label", "pgh_context"]
    # The entry's values, masked (audit_stream.masking): the log itself holds them in clear.
    exclude = ["old_data", "new_data"]
    readonly_fields = ["old_values", "new_values"]
    old_values = _masked_json("old_data")
    new_values = _masked_json("new_data")
    list_filter = [changelists.row_log_label_filter(), changelists.row_log_table_filter()]
    list_select_related = ["pgh_context"]
    search_fields = ["=pgh_obj_id"]
    show_full_result_count = False
    paginator = changelists.EstimatedPaginator


@admin.register(DdlLog)
class DdlLogAdmin(ReadOnlyAdmin):
    list_display = ["pgh_id", "pgh_created_at", "logged_table", "pgh_label", "former_name", "command"]
    list_filter = ["pgh_label", "logged_table"]


class WebhookEndpointForm(forms.ModelForm):
    """Refuses filters naming models or labels the change feed never carries."""

    class Meta:
        model = WebhookEndpoint
        fields = [
            "url",
            "description",
            "is_active",
            "filter_models",
            "filter_labels",
            "rate_limit",
            "ordered",
        ]

    def clean(self):
        cleaned = super().clean()
        for field, problem in zip(
            ("filter_models", "filter_labels"),
            (
                filters.check(cleaned.get("filter_models") or [], []),
                filters.check([], cleaned.get("filter_labels") or []),
            ),
            strict=True,
        ):
            if problem:
                self.add_error(field, problem)
        return cleaned


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = WebhookEndpointForm
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    list_display = [
        "id", "url", "is_active", "ordered", "masked_secret", "consecutive_failures", "disabled_reason",
    ]  # fmt: skip
    list_filter = ["is_active", "ordered"]
    fields = [
        "url", "description", "is_active", "filter_models", "filter_labels", "rate_limit", "ordered",
        "masked_secret", "consecutive_failures", "disabled_reason", "disabled_at", "created_at",
    ]  # fmt: skip
    readonly_fields = [
        "masked_secret",
        "consecutive_failures",
        "disabled_reason",
        "disabled_at",
        "created_at",
    ]
    actions = [
        "replay_dead_last_day",
        "replay_dead_all",
        "send_test_message",
        "disable_endpoints",
        "enable_endpoints",
    ]

    @admin.display(description="secret")
    def masked_secret(self, obj):
        return obj.masked_secret if obj.pk else "(generated when saved, shown once)"

    def response_add(self, request, obj, post_url_continue=None):
        self.message_user(
            request,
            f"Signing secret of {obj.url} (shown once, keep it safe): {obj.secret}",
            messages.WARNING,
        )
        return super().response_add(request, obj, post_url_continue)

    def has_replay_permission(self, request) -> bool:
        """Replaying changes the endpoint's messages: the change permission on both."""
        return self.has_change_permission(request) and request.user.has_perm(
            "audit_stream.change_webhookmessage"
        )

    @admin.action(description="Replay dead messages of the last 24 hours", permissions=["replay"])
    def replay_dead_last_day(self, request, queryset):
        since = timezone.now() - timedelta(days=1)
        count = sum(delivery.replay_failed(endpoint, since) for endpoint in queryset)
        self.message_user(request, f"Replaying {count} dead message(s).")

    @admin.action(description="Replay all dead messages", permissions=["replay"])
    def replay_dead_all(self, request, queryset):
        count = sum(delivery.replay_failed(endpoint) for endpoint in queryset)
        self.message_user(request, f"Replaying {count} dead message(s).")

    @admin.action(description="Send a test message", permissions=["change"])
    def send_test_message(self, request, queryset):
        for endpoint in queryset:
            delivery.send_test(endpoint)
        self.message_user(request, f"Queued {queryset.count()} test message(s).")

    @admin.action(description="Disable", permissions=["change"])
    def disable_endpoints(self, request, queryset):
        for endpoint in queryset:
            endpoint.disable(f"Disabled by {request.user} in the admin.")

    @admin.action(description="Enable", permissions=["change"])
    def enable_endpoints(self, request, queryset):
        for endpoint in queryset:
            endpoint.enable()


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    fields = ["attempted_at", "status_code", "duration_ms", "error", "response_excerpt"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(WebhookMessage)
class WebhookMessageAdmin(ReadOnlyAdmin):
    list_display = [
        "webhook_id",
        "endpoint",
        "event_type",
        "status",
        "attempts",
        "next_attempt_at",
        "created_at",
    ]
    list_filter = ["status", "endpoint"]
    ordering = ["-created_at", "-id"]  # newest first (ids are random UUIDs)
    exclude = ["payload"]
    readonly_fields = ["payload_json", "last_error"]
    payload_json = _exact_json("payload")
    inlines = [WebhookAttemptInline]
    actions = ["replay_messages"]
    show_full_result_count = False

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm("audit_stream.change_webhookmessage") and obj is None

    @admin.action(description="Replay (deliver again)", permissions=["change"])
    def replay_messages(self, request, queryset):
        self.message_user(request, f"Replaying {delivery.replay(list(queryset))} message(s).")


# Sinks: their own module, registered on import.
from audit_stream.sinks import admin as _sinks_admin  # noqa: E402, F401

# --- history, revert and restore ----------------------------------------------------------------


class VersionAdminMixin:
    """Adds audit_stream history, revert and restore to a ``ModelAdmin``."""

    history_per_page = 25
    object_history_template = "audit_stream/admin/object_history.html"
    revert_confirmation_template = "audit_stream/admin/revert_confirmation.html"
    as_of_template = "audit_stream/admin/as_of.html"
    deleted_objects_template = "audit_stream/admin/deleted_objects.html"

    def get_urls(self):
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        wrap = self.admin_site.admin_view
        return [
            path("deleted/", wrap(self.deleted_objects_view), name=f"{prefix}_deleted"),
            path(
                "<path:object_id>/history/revert/<str:key>/",
                wrap(self.revert_view),
                name=f"{prefix}_revert",
            ),
            path(
                "<path:object_id>/history/restore/<str:key>/",
                wrap(self.restore_view),
                name=f"{prefix}_restore",
            ),
            path(
                "<path:object_id>/history/as-of/<str:key>/",
                wrap(self.as_of_view),
                name=f"{prefix}_as_of",
            ),
            *super().get_urls(),
        ]

    # The history page replaces Django's (LogEntry-based) one at <id>/history/.
    def history_view(self, request, object_id, extra_context=None):
        model = self.model
        obj = self.get_object(request, object_id)
        if obj is None and not self.has_view_or_change_permission(request):
            raise PermissionDenied
        if obj is not None and not self.has_view_or_change_permission(request, obj):
            raise PermissionDenied
        pk = model._meta.pk.to_python(object_id)
        if _tracked(model):
            events = (
                AggregateEvent.objects.target_pk(model, pk)
                .select_related("pgh_context")
                .order_by("-pgh_created_at", "-pgh_table", "-pgh_id")
            )
        else:  # logged schema-wide by initlogging
            events = (
                RowLog.objects.filter(logged_table__in=rowlog.table_names(model), pgh_obj_id=str(pk))
                .select_related("pgh_context")
                .order_by("-pgh_id")
            )
        page = Paginator(events, self.history_per_page).get_page(request.GET.get("p"))
        if obj is None and not page.object_list:
            raise Http404(f"{model._meta.verbose_name} {object_id} has no history.")
        may_change = (
            self.has_change_permission(request, obj) if obj is not None else self._may_restore(request)
        )
        context = {
            **self.admin_site.each_context(request),
            "title": f"History: {obj}"
            if obj is not None
            else f"History of deleted {model._meta.verbose_name} {pk}",
            "opts": self.opts,
            "object": obj,
            "object_id": object_id,
            "page": page,
            "entries": _entries(model, page.object_list, obj, may_change, self.opts, object_id),
            "event_models": _event_model_links(model, object_id),
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.object_history_template, context)

    def _event_for(self, object_id, key):
        table, _, pgh_id = key.rpartition(":")
        if table == rowlog.ROW_LOG_TABLE:
            pk = self.model._meta.pk.to_python(object_id)
            event = RowLog.objects.filter(
                pgh_id=pgh_id, pgh_obj_id=str(pk), logged_table__in=rowlog.table_names(self.model)
            ).first()
            if event is None:
                raise Http404("Unknown event.")
            return event
        event_model = tracking._event_models.get(table)
        if event_model not in tracking.event_models_for(self.model):
            raise Http404("Unknown event.")
        event = event_model.objects.filter(
            pgh_id=pgh_id, pgh_obj_id=self.model._meta.pk.to_python(object_id)
        ).first()
        if event is None:
            raise Http404("Unknown event.")
        return event

    def revert_view(self, request, object_id, key):
        obj = self.get_object(request, object_id)
        if obj is None:
            raise Http404(f"{self.opts.verbose_name} {object_id} does not exist; restore it instead.")
        if not self.has_change_permission(request, obj):
            raise PermissionDenied
        event = self._event_for(object_id, key)
        history_url = reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_history", args=[object_id])
        try:
            changes = _revert.changes_to_apply(obj, event)
        except _revert.RevertError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(history_url)
        if request.method == "POST":
            try:
                _revert.revert(event)
            except _revert.RevertError as exc:
                self.message_user(request, str(exc), messages.ERROR)
                return HttpResponseRedirect(history_url)
            self.message_user(
                request, f"Reverted {obj} to the version of {event.pgh_created_at:%Y-%m-%d %H:%M:%S}."
            )
            return HttpResponseRedirect(history_url)
        masked = _masked_fields(self.model)  # the revert writes the values; the page shows the mask
        display = _Display(
            self.model,
            [
                {f.attname: cur for f, cur, _ in changes if f.column not in masked},
                {f.attname: new for f, _, new in changes if f.column not in masked},
            ],
        )
        context = {
            **self.admin_site.each_context(request),
            "title": f"Revert {obj}?",
            "opts": self.opts,
            "object": obj,
            "event": event,
            "rows": [
                (f.verbose_name, *(_shown(display, f, value, masked) for value in (cur, new)))
                for f, cur, new in changes
            ],
            "history_url": history_url,
        }
        return TemplateResponse(request, self.revert_confirmation_template, context)

    def _may_restore(self, request) -> bool:
        """Restoring re-creates a row from its history: the add and the change permission."""
        return self.has_add_permission(request) and self.has_change_permission(request)

    def as_of_view(self, request, object_id, key):
        """The object's fields as of one version's moment, read-only (``audit_stream.as_of``)."""
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        event = self._event_for(object_id, key)
        pk = self.model._meta.pk.to_python(object_id)
        try:
            past = as_of(self.model(pk=pk), event.pgh_created_at)
        except self.model.DoesNotExist:
            past = None
        except ValueError as exc:
            raise Http404(str(exc)) from None
        context = {
            **self.admin_site.each_context(request),
            "title": f"{self.opts.verbose_name.capitalize()} {pk}"
            f" as of {event.pgh_created_at:%Y-%m-%d %H:%M:%S}",
            "opts": self.opts,
            "object_id": object_id,
            "event": event,
            "fields": _as_of_fields(past) if past is not None else [],
            "history_url": reverse(
                f"admin:{self.opts.app_label}_{self.opts.model_name}_history", args=[object_id]
            ),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.as_of_template, context)

    def restore_view(self, request, object_id, key):
        if not self._may_restore(request):
            raise PermissionDenied
        event = self._event_for(object_id, key)
        if request.method != "POST":
            raise PermissionDenied("Restore is a POST.")
        try:
            obj = _revert.restore(event)
        except _revert.RevertError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(
                reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_history", args=[object_id])
            )
        self.message_user(request, f"Restored {obj}.")
        return HttpResponseRedirect(
            reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[obj.pk])
        )

    def deleted_objects_view(self, request):
        """Objects of this model that were deleted and whose last recorded state can restore them."""
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        rows = []
        for event_model in _revertible_event_models(self.model):
            deleted = _deleted_events(event_model, self.model)
            rows += [(event, f"{event._meta.db_table}:{event.pgh_id}") for event in deleted]
        if not _tracked(self.model):
            rows += [(entry, f"{rowlog.ROW_LOG_TABLE}:{entry.pgh_id}") for entry in _deleted_rows(self.model)]
        rows.sort(key=lambda row: row[0].pgh_created_at, reverse=True)
        page = Paginator(rows, self.history_per_page).get_page(request.GET.get("p"))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Deleted {self.opts.verbose_name_plural}",
            "opts": self.opts,
            "page": page,
            "may_restore": self._may_restore(request),
        }
        return TemplateResponse(request, self.deleted_objects_template, context)


class VersionModelAdmin(VersionAdminMixin, admin.ModelAdmin):
    """A ``ModelAdmin`` with audit_stream history, revert and restore."""

    change_list_template = "audit_stream/admin/change_list.html"


def _revertible_event_models(model):
    return [m for m in tracking.event_models_for(model) if _revert.can_revert(m)]


def _deleted_events(event_model, model, limit=500):
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


def _tracked(model) -> bool:
    return bool(tracking.event_models_for(model))


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


def _deleted_rows(model, limit=500):
    """Rows of a logged table deleted and not re-created: their delete entries (restorable)."""
    sql = _DELETED_ROWS_SQL.format(
        table=quote_name(model._meta.db_table), pk=quote_name(model._meta.pk.column)
    )
    return list(RowLog.objects.raw(sql, [rowlog.table_names(model), limit]))


def _event_model_links(model, object_id):
    links = []
    for event_model in tracking.event_models_for(model):
        if not event_model._pgh_has_obj:
            continue
        try:
            url = reverse(f"admin:{event_model._meta.app_label}_{event_model._meta.model_name}_changelist")
        except Exception:
            continue
        links.append((event_model._meta.verbose_name_plural, f"{url}?pgh_obj__exact={object_id}"))
    return links


class _Display:
    """Shows recorded values as a person reads them: foreign keys as their objects."""

    def __init__(self, model, value_maps):
        self.related = {}
        for field in model._meta.concrete_fields:
            if not field.is_relation:
                continue
            ids = {vm.get(field.attname) for vm in value_maps} - {None}
            if ids:
                target = field.related_model._default_manager.in_bulk(list(ids))
                self.related[field.attname] = {str(k): v for k, v in target.items()}

    def show(self, field, value):
        if value is None:
            return "—"
        if field.is_relation:
            obj = self.related.get(field.attname, {}).get(str(value))
            return str(obj) if obj is not None else f"{value} (deleted)"
        if field.choices:
            return dict(field.flatchoices).get(value, value)
        return value


def _diff(row, masked: set[str]) -> dict:
    """The row's diff; for an object's first event (``pgh_diff`` is None) every value it recorded.

    Masked columns show the mask: ``AggregateEvent`` masks them in SQL, the row
    log's entries (read from the log itself) are masked here.
    """
    if row.event_model is RowLog:
        return masking.mask_pairs(row.pgh_diff, masked)
    if row.pgh_diff is not None:
        return row.pgh_diff
    return {column: [None, value] for column, value in (row.pgh_data or {}).items()}


def _masked_columns(model, row) -> set[str]:
    """The columns a history row of ``model`` shows masked (their values are the mask, not the field's)."""
    if row.event_model is RowLog:
        return set(masking.table_columns(model))
    return set(masking.columns_of(row.event_model))


def _masked_fields(model) -> set[str]:
    """The columns of ``model`` shown masked (:mod:`audit_stream.masking`)."""
    return masking.model_columns(model)


def _shown(display, field, value, masked: set[str]):
    if field.column in masked:
        return "—" if value is None else masking.mask_value(value)
    return display.show(field, value)


def _as_of_fields(past):
    """(field name, value) of an as-of instance: relations as of the same moment, sets as lists."""
    fields = []
    masked = _masked_fields(type(past))
    for field in past._meta.concrete_fields:
        if field.column in masked:
            value = getattr(past, field.attname)
            fields.append((field.verbose_name, "—" if value is None else masking.mask_value(value)))
            continue
        value = getattr(past, field.name) if field.is_relation else getattr(past, field.attname)
        if field.choices and not field.is_relation:
            value = dict(field.flatchoices).get(value, value)
        fields.append((field.verbose_name, "—" if value is None else value))
    for field in past._meta.many_to_many:
        if m2m_event_model(type(past), field.name) is not None:
            fields.append((field.verbose_name, ", ".join(map(str, getattr(past, field.name).all())) or "—"))
    return fields


def _can_show_as_of(model) -> bool:
    try:
        source_for(model)
    except ValueError:
        return False
    return True


def _m2m_diff(field, old, new):
    """A many-to-many change as two cells: what left the set, what joined it (by name)."""
    old, new = set(old or []), set(new or [])
    members = field.related_model._default_manager.in_bulk(list(old | new))

    def names(keys):
        return ", ".join(f'"{members.get(k, k)}"' for k in sorted(keys, key=str))

    removed, added = old - new, new - old
    minus = "\u2212"  # the minus sign, as in the "tags: + \"red\", \u2212 \"blue\""
    return (f"{minus} {names(removed)}" if removed else ""), (f"+ {names(added)}" if added else "")


def _entries(model, rows, obj, may_change, opts, object_id):
    """History rows ready for the template: who, what changed (field, old, new), actions."""
    by_column = {f.column: f for f in model._meta.concrete_fields}
    m2m = {f.name: f for f in model._meta.many_to_many}
    as_of_ok = _can_show_as_of(model)
    value_maps = []
    masked = {id(row): _masked_columns(model, row) for row in rows}
    diffs = {id(row): _diff(row, masked[id(row)]) for row in rows}
    for row in rows:
        shown = {c: v for c, v in diffs[id(row)].items() if c in by_column and c not in masked[id(row)]}
        value_maps.append({by_column[c].attname: v[0] for c, v in shown.items()})
        value_maps.append({by_column[c].attname: v[1] for c, v in shown.items()})
    display = _Display(model, value_maps)
    user_ids = {r.pgh_context.metadata.get("user") for r in rows if r.pgh_context} - {None}
    users = get_user_model()._default_manager.in_bulk([u for u in user_ids if isinstance(u, int)])
    entries = []
    for row in rows:
        metadata = dict(row.pgh_context.metadata) if row.pgh_context else {}
        user = metadata.pop("user", None)
        diff = []
        for column, (old, new) in diffs[id(row)].items():
            field = by_column.get(column)
            if field is not None and column in masked[id(row)]:
                diff.append((field.verbose_name, "—" if old is None else old, "—" if new is None else new))
                continue
            if field is None and column in m2m and getattr(row.event_model, "_pgh_m2m_field", None) == column:
                diff.append((m2m[column].verbose_name, *_m2m_diff(m2m[column], old, new)))
                continue
            if field is None:
                continue
            old, new = (field.to_python(v) if v is not None else None for v in (old, new))
            diff.append((field.verbose_name, display.show(field, old), display.show(field, new)))
        key = f"{row.pgh_table}:{row.pgh_id}"
        revertible = _revert.can_revert(row.event_model)
        entries.append(
            {
                "row": row,
                "context_url": reverse("admin:audit_stream_context_change", args=[row.pgh_context_id])
                if row.pgh_context_id
                else None,
                "user": users.get(user, user),
                "metadata": metadata,
                "diff": diff,
                "revert_url": reverse(
                    f"admin:{opts.app_label}_{opts.model_name}_revert", args=[object_id, key]
                )
                if obj is not None and may_change and revertible
                else None,
                "restore_url": reverse(
                    f"admin:{opts.app_label}_{opts.model_name}_restore", args=[object_id, key]
                )
                if obj is None and may_change and revertible
                else None,
                "as_of_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_as_of", args=[object_id, key])
                if as_of_ok and row.pgh_label not in _row_delete_labels(row)
                else None,
            }
        )
    return entries


def _row_delete_labels(row) -> set[str]:
    if row.event_model is RowLog:
        return {"delete"}
    return set(events.delete_labels(row.event_model))


class EventAdmin(ReadOnlyAdmin):
    """Read-only admin of an event model, filterable by object and label.

    Each page costs a constant number of queries at any history size: the
    context joined (LEFT: events without one stay), the object looked up once
    per page and never joined (the events of a deleted object stay listed),
    an estimated count, and the labels the model declares as filter choices.
    """

    show_full_result_count = False
    paginator = changelists.EstimatedPaginator

    def get_changelist(self, request, **kwargs):
        return changelists.EventChangeList

    def get_exclude(self, request, obj=None):
        """Masked fields are left out (:mod:`audit_stream.masking`): the event table holds their value."""
        masked = set(masking.columns_of(self.model))
        hidden = [f.name for f in self.model._meta.concrete_fields if f.column in masked]
        return [*(super().get_exclude(request, obj) or ()), *hidden] or None

    @admin.display(description="object")
    def pgh_object(self, event):
        found = getattr(event, "_pgh_obj_found", None)
        return str(found) if found is not None else f"{event.pgh_obj_id} (deleted)"


def register_event_admins(site: admin.AdminSite = admin.site) -> None:
    """Register a read-only admin for every event model that has none yet."""
    for event_model in tracking._event_models.values():
        if site.is_registered(event_model):
            continue
        names = {f.name for f in event_model._meta.fields}
        columns = ["pgh_id", "pgh_created_at", "pgh_label", "pgh_obj", "pgh_obj_id", "pgh_context"]
        display = [c for c in columns if c in names]
        site.register(
            event_model,
            type(
                f"{event_model.__name__}Admin",
                (EventAdmin,),
                {
                    "list_display": ["pgh_object" if c == "pgh_obj" else c for c in display],
                    "list_select_related": ["pgh_context"] if "pgh_context" in names else [],
                    "list_filter": [changelists.event_label_filter(event_model)],
                },
            ),
        )


register_event_admins()
