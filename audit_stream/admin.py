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

from audit_stream import revert as _revert
from audit_stream import rowlog, tracking
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


@admin.register(Context)
class ContextAdmin(ReadOnlyAdmin):
    list_display = ["id", "created_at", "updated_at", "metadata"]
    search_fields = ["id"]
    date_hierarchy = "created_at"
    ordering = ["-created_at", "-id"]  # newest first (ids are random UUIDs)


@admin.register(Change)
class ChangeAdmin(ReadOnlyAdmin):
    list_display = ["id", "created_at", "model", "object_id", "label", "diff"]
    list_filter = ["model", "label"]
    search_fields = ["object_id"]
    show_full_result_count = False


@admin.register(RowLog)
class RowLogAdmin(ReadOnlyAdmin):
    list_display = ["pgh_id", "pgh_created_at", "logged_table", "pgh_obj_id", "pgh_label", "pgh_context"]
    list_filter = ["pgh_label", "logged_table"]
    search_fields = ["pgh_obj_id"]
    show_full_result_count = False


@admin.register(DdlLog)
class DdlLogAdmin(ReadOnlyAdmin):
    list_display = ["pgh_id", "pgh_created_at", "logged_table", "pgh_label", "former_name", "command"]
    list_filter = ["pgh_label", "logged_table"]


class WebhookEndpointForm(forms.ModelForm):
    """Refuses filters naming models or labels the change feed never carries."""

    class Meta:
        model = WebhookEndpoint
        fields = ["url", "description", "is_active", "filter_models", "filter_labels", "rate_limit"]

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
    list_display = ["id", "url", "is_active", "masked_secret", "consecutive_failures", "disabled_reason"]
    list_filter = ["is_active"]
    fields = [
        "url", "description", "is_active", "filter_models", "filter_labels", "rate_limit",
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
    readonly_fields = ["payload", "last_error"]
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
        display = _Display(
            self.model, [{f.attname: cur for f, cur, _ in changes}, {f.attname: new for f, _, new in changes}]
        )
        context = {
            **self.admin_site.each_context(request),
            "title": f"Revert {obj}?",
            "opts": self.opts,
            "object": obj,
            "event": event,
            "rows": [(f.verbose_name, display.show(f, cur), display.show(f, new)) for f, cur, new in changes],
            "history_url": history_url,
        }
        return TemplateResponse(request, self.revert_confirmation_template, context)

    def _may_restore(self, request) -> bool:
        """Restoring re-creates a row from its history: the add and the change permission."""
        return self.has_add_permission(request) and self.has_change_permission(request)

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
    """The last event of each object that no longer exists (its last recorded state)."""
    events, tracked, pk = (quote_name(event_model._meta.db_table), quote_name(model._meta.db_table),
                           quote_name(model._meta.pk.column))  # fmt: skip
    sql = f"""
        SELECT DISTINCT ON (e.pgh_obj_id) e.*
        FROM {events} AS e
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


def _diff(row) -> dict:
    """The row's diff; for an object's first event (``pgh_diff`` is None) every value it recorded."""
    if row.pgh_diff is not None:
        return row.pgh_diff
    return {column: [None, value] for column, value in (row.pgh_data or {}).items()}


def _entries(model, rows, obj, may_change, opts, object_id):
    """History rows ready for the template: who, what changed (field, old, new), actions."""
    by_column = {f.column: f for f in model._meta.concrete_fields}
    value_maps = []
    for row in rows:
        value_maps.append({by_column[c].attname: v[0] for c, v in _diff(row).items() if c in by_column})
        value_maps.append({by_column[c].attname: v[1] for c, v in _diff(row).items() if c in by_column})
    display = _Display(model, value_maps)
    user_ids = {r.pgh_context.metadata.get("user") for r in rows if r.pgh_context} - {None}
    users = get_user_model()._default_manager.in_bulk([u for u in user_ids if isinstance(u, int)])
    entries = []
    for row in rows:
        metadata = dict(row.pgh_context.metadata) if row.pgh_context else {}
        user = metadata.pop("user", None)
        diff = []
        for column, (old, new) in _diff(row).items():
            field = by_column.get(column)
            if field is None:
                continue
            old, new = (field.to_python(v) if v is not None else None for v in (old, new))
            diff.append((field.verbose_name, display.show(field, old), display.show(field, new)))
        key = f"{row.pgh_table}:{row.pgh_id}"
        revertible = _revert.can_revert(row.event_model)
        entries.append(
            {
                "row": row,
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
            }
        )
    return entries


class EventAdmin(ReadOnlyAdmin):
    """Read-only admin of an event model, filterable by object and label."""

    list_filter = ["pgh_label"]
    show_full_result_count = False


def register_event_admins(site: admin.AdminSite = admin.site) -> None:
    """Register a read-only admin for every event model that has none yet."""
    for event_model in tracking._event_models.values():
        if site.is_registered(event_model):
            continue
        names = {f.name for f in event_model._meta.fields}
        columns = ["pgh_id", "pgh_created_at", "pgh_label", "pgh_obj", "pgh_context"]
        site.register(
            event_model,
            type(
                f"{event_model.__name__}Admin",
                (EventAdmin,),
                {"list_display": [c for c in columns if c in names]},
            ),
        )


register_event_admins()
