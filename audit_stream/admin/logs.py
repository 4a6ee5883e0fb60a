"""Admin pages of the history records: contexts, the change feed, the row log and the DDL log."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from audit_stream import masking, rowlog
from audit_stream.admin import changelists
from audit_stream.admin.readonly import ReadOnlyAdmin, context_link, exact_json
from audit_stream.admin.undo import UndoContextMixin
from audit_stream.exact import dumps as exact_dumps
from audit_stream.models import Change, Context, DdlLog, RowLog
from audit_stream.webhooks import filters

__all__ = ["ChangeAdmin", "ContextAdmin", "DdlLogAdmin", "RowLogAdmin"]


@admin.register(Context)
class ContextAdmin(UndoContextMixin, ReadOnlyAdmin):
    list_display = ["id", "created_at", "updated_at", "metadata_json", "undo_link"]
    exclude = ["metadata"]
    readonly_fields = ["metadata_json"]
    metadata_json = exact_json("metadata")
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
    diff_json = exact_json("diff")
    snapshot_json = exact_json("snapshot")
    # Filters and counts that cost a page at any size (audit_stream.admin.changelists).
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
        return queryset.filter(model__in=filters.known_models(), object_id=term), False

    @admin.display(description="context")
    def context_link(self, obj):
        return context_link(obj.context_id)


def masked_json(field_name: str):
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
    old_values = masked_json("old_data")
    new_values = masked_json("new_data")
    list_filter = [changelists.row_log_label_filter(), changelists.row_log_table_filter()]
    list_select_related = ["pgh_context"]
    search_fields = ["=pgh_obj_id"]
    show_full_result_count = False
    paginator = changelists.EstimatedPaginator


@admin.register(DdlLog)
class DdlLogAdmin(ReadOnlyAdmin):
    list_display = ["pgh_id", "pgh_created_at", "logged_table", "pgh_label", "former_name", "command"]
    list_filter = ["pgh_label", "logged_table"]
