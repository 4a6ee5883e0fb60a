"""Object history in the admin: the History page, revert, restore, as-of and deleted objects.

``VersionModelAdmin`` (or ``VersionAdminMixin``) gives a model's admin a
per-object history page (time, label, user and context, field-level diffs),
"Revert to this version" with a confirmation page, and "Restore" for deleted
objects.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from audit_stream import registry, rowlog
from audit_stream import revert as _revert
from audit_stream.admin.deleted import deleted_events, deleted_rows, is_tracked, revertible_event_models
from audit_stream.admin.entries import (
    Display,
    as_of_fields,
    entries,
    event_model_links,
    masked_fields,
    shown_value,
)
from audit_stream.history import as_of
from audit_stream.models import AggregateEvent, RowLog

__all__ = ["VersionAdminMixin", "VersionModelAdmin"]


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
        if is_tracked(model):
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
            "entries": entries(model, page.object_list, obj, may_change, self.opts, object_id),
            "event_models": event_model_links(model, object_id),
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.object_history_template, context)

    def _event_for(self, object_id, key):
        table, _, pgh_id = key.rpartition(":")
        if table == registry.ROW_LOG_TABLE:
            pk = self.model._meta.pk.to_python(object_id)
            event = RowLog.objects.filter(
                pgh_id=pgh_id, pgh_obj_id=str(pk), logged_table__in=rowlog.table_names(self.model)
            ).first()
            if event is None:
                raise Http404("Unknown event.")
            return event
        event_model = registry.event_models.get(table)
        if event_model not in registry.event_models_for(self.model):
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
        masked = masked_fields(self.model)  # the revert writes the values; the page shows the mask
        display = Display(
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
                (f.verbose_name, *(shown_value(display, f, value, masked) for value in (cur, new)))
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
            "fields": as_of_fields(past) if past is not None else [],
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
        for event_model in revertible_event_models(self.model):
            deleted = deleted_events(event_model, self.model)
            rows += [(event, f"{event._meta.db_table}:{event.pgh_id}") for event in deleted]
        if not is_tracked(self.model):
            rows += [
                (entry, f"{registry.ROW_LOG_TABLE}:{entry.pgh_id}") for entry in deleted_rows(self.model)
            ]
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
