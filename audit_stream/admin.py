"""Admin: contexts, the change feed, and webhooks (secrets masked, shown once at creation)."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import admin, messages
from django.db import models
from django.utils import timezone

from audit_stream.models import Change, Context, WebhookAttempt, WebhookEndpoint, WebhookMessage
from audit_stream.webhooks import delivery


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


@admin.register(Change)
class ChangeAdmin(ReadOnlyAdmin):
    list_display = ["id", "created_at", "model", "object_id", "label", "diff"]
    list_filter = ["model", "label"]
    search_fields = ["object_id"]
    show_full_result_count = False


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
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

    @admin.action(description="Replay dead messages of the last 24 hours")
    def replay_dead_last_day(self, request, queryset):
        since = timezone.now() - timedelta(days=1)
        count = sum(delivery.replay_failed(endpoint, since) for endpoint in queryset)
        self.message_user(request, f"Replaying {count} dead message(s).")

    @admin.action(description="Replay all dead messages")
    def replay_dead_all(self, request, queryset):
        since = timezone.now() - timedelta(days=365 * 100)
        count = sum(delivery.replay_failed(endpoint, since) for endpoint in queryset)
        self.message_user(request, f"Replaying {count} dead message(s).")

    @admin.action(description="Send a test message")
    def send_test_message(self, request, queryset):
        for endpoint in queryset:
            delivery.send_test(endpoint)
        self.message_user(request, f"Queued {queryset.count()} test message(s).")

    @admin.action(description="Disable")
    def disable_endpoints(self, request, queryset):
        for endpoint in queryset:
            endpoint.disable(f"Disabled by {request.user} in the admin.")

    @admin.action(description="Enable")
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
    readonly_fields = ["payload", "last_error"]
    inlines = [WebhookAttemptInline]
    actions = ["replay_messages"]
    show_full_result_count = False

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm("audit_stream.change_webhookmessage") and obj is None

    @admin.action(description="Replay (deliver again)", permissions=["change"])
    def replay_messages(self, request, queryset):
        self.message_user(request, f"Replaying {delivery.replay(list(queryset))} message(s).")
