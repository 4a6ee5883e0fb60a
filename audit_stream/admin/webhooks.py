"""Admin pages of webhook endpoints (with replay, test and enable actions) and their messages."""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.db import models
from django.utils import timezone

from audit_stream.admin.readonly import ReadOnlyAdmin, exact_json
from audit_stream.models import WebhookAttempt, WebhookEndpoint, WebhookMessage
from audit_stream.webhooks import delivery, filters

__all__ = ["WebhookAttemptInline", "WebhookEndpointAdmin", "WebhookEndpointForm", "WebhookMessageAdmin"]


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
    payload_json = exact_json("payload")
    inlines = [WebhookAttemptInline]
    actions = ["replay_messages"]
    show_full_result_count = False

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm("audit_stream.change_webhookmessage") and obj is None

    @admin.action(description="Replay (deliver again)", permissions=["change"])
    def replay_messages(self, request, queryset):
        self.message_user(request, f"Replaying {delivery.replay(list(queryset))} message(s).")
