"""The base of audit_stream's admin pages: history is read-only, JSON shown exactly, contexts linked."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from audit_stream.exact import dumps as exact_dumps

__all__ = ["ReadOnlyAdmin", "context_link", "exact_json"]


class ReadOnlyAdmin(admin.ModelAdmin):
    """History is append-only: view, never add, change or delete."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def exact_json(field_name: str):
    """An admin column or read-only field showing a JSON field with every digit (``audit_stream.exact``)."""

    @admin.display(description=field_name)
    def show(self, obj) -> str:
        return exact_dumps(getattr(obj, field_name))

    return show


def context_link(context_id):
    """A link to a context's admin page (where it can be undone), or a dash."""
    if context_id is None:
        return "—"
    url = reverse("admin:audit_stream_context_change", args=[context_id])
    return format_html('<a href="{}">{}</a>', url, str(context_id)[:8])
