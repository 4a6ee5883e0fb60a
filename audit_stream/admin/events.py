"""Read-only admin pages of every event model, registered for each one that has none."""

from __future__ import annotations

from django.contrib import admin

from audit_stream import masking, registry
from audit_stream.admin import changelists
from audit_stream.admin.readonly import ReadOnlyAdmin

__all__ = ["EventAdmin", "register_event_admins"]


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
    for event_model in registry.event_models.values():
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
