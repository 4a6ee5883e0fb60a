"""Admin pages for sinks and their messages (registered by ``audit_stream.admin``)."""

from __future__ import annotations

from django import forms
from django.contrib import admin

from audit_stream.sinks import delivery
from audit_stream.sinks.models import Sink, SinkMessage
from audit_stream.webhooks import filters


class SinkForm(forms.ModelForm):
    class Meta:
        model = Sink
        fields = [
            "name",
            "kind",
            "target",
            "options",
            "is_active",
            "filter_models",
            "filter_labels",
            "ordered",
        ]

    def clean(self):
        cleaned = super().clean()
        problems = filters.check(cleaned.get("filter_models") or [], cleaned.get("filter_labels") or [])
        for problem in problems:
            self.add_error("filter_models" if "model" in problem else "filter_labels", problem)
        return cleaned


@admin.register(Sink)
class SinkAdmin(admin.ModelAdmin):
    form = SinkForm
    list_display = ["id", "name", "kind", "target", "is_active", "ordered"]
    list_filter = ["kind", "is_active", "ordered"]
    fields = [
        "name",
        "kind",
        "target",
        "options",
        "is_active",
        "filter_models",
        "filter_labels",
        "ordered",
        "created_at",
    ]
    readonly_fields = ["created_at"]
    actions = ["replay_dead", "disable_sinks", "enable_sinks"]

    def has_replay_permission(self, request) -> bool:
        """Replaying changes the sink's messages: the change permission on both."""
        return self.has_change_permission(request) and request.user.has_perm(
            "audit_stream.change_sinkmessage"
        )

    @admin.action(description="Replay all dead messages", permissions=["replay"])
    def replay_dead(self, request, queryset):
        count = sum(delivery.replay(sink.pk) for sink in queryset)
        self.message_user(request, f"Replaying {count} dead message(s).")

    @admin.action(description="Disable", permissions=["change"])
    def disable_sinks(self, request, queryset):
        queryset.update(is_active=False)

    @admin.action(description="Enable", permissions=["change"])
    def enable_sinks(self, request, queryset):
        queryset.update(is_active=True)


@admin.register(SinkMessage)
class SinkMessageAdmin(admin.ModelAdmin):
    list_display = ["message_id", "sink", "event_type", "status", "attempts", "next_attempt_at", "created_at"]
    list_filter = ["status", "sink"]
    ordering = ["-created_at", "-id"]
    # Its sink first, then the columns every outbox message has (audit_stream.outbox).
    readonly_fields = ["sink", *(f.name for f in SinkMessage._meta.fields if f.name != "sink")]
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
