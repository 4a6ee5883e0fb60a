"""An endpoint whose host stops resolving can still be disabled, enabled and rotated.

The URL is checked when it is set or changed; deliveries to it are refused and
recorded as failed attempts; status changes (by the worker, the command, the
admin) always succeed.
"""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from audit_stream.models import WebhookAttempt, WebhookEndpoint, WebhookMessage
from audit_stream.webhooks import delivery

pytestmark = pytest.mark.django_db

PUBLIC = "http://93.184.215.14/hook"
GONE = "http://host-that-stopped-resolving.invalid/hook"  # .invalid never resolves (RFC 2606)


@pytest.fixture
def gone():
    """An endpoint saved while its URL was fine, whose host no longer resolves."""
    endpoint = WebhookEndpoint.objects.create(url=PUBLIC)
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(url=GONE)  # what DNS did meanwhile
    return WebhookEndpoint.objects.get(pk=endpoint.pk)


def test_disable_enable_and_rotate_succeed_when_the_host_no_longer_resolves(gone):
    """Status changes never re-validate a URL nobody changed."""
    gone.disable("maintenance")
    gone.enable()
    gone.rotate_secret()
    gone.description = "still editable"
    gone.save()
    stored = WebhookEndpoint.objects.get(pk=gone.pk)
    assert (stored.is_active, stored.description, stored.previous_secret is not None) == (
        True,
        "still editable",
        True,
    )


def test_a_changed_url_is_still_checked(gone):
    """Setting or changing the URL is when it is validated."""
    gone.url = "http://another-gone-host.invalid/hook"
    with pytest.raises(ValidationError, match="does not resolve"):
        gone.save()
    with pytest.raises(ValidationError, match="non-public"):
        WebhookEndpoint(url="http://10.0.0.1/").save()
    assert WebhookEndpoint.objects.get(pk=gone.pk).url == GONE


@pytest.mark.django_db(transaction=True)  # the worker claims and records in transactions of its own
def test_the_worker_records_refusals_as_failed_attempts_and_disables_the_endpoint(gone, settings):
    """A refused delivery is a failed attempt; after WEBHOOK_DISABLE_AFTER the worker disables it."""
    settings.AUDIT_STREAM = {"WEBHOOK_DISABLE_AFTER": 60}
    message = WebhookMessage.objects.create(endpoint=gone, event_type="t", payload={})
    WebhookEndpoint.objects.filter(pk=gone.pk).update(failing_since=timezone.now() - timedelta(hours=1))
    result = delivery.deliver(gone.pk)
    assert result.failed == 1
    attempt = WebhookAttempt.objects.get()
    assert attempt.error.startswith("refused:") and "does not resolve" in attempt.error
    assert not attempt.succeeded
    message.refresh_from_db()
    assert (message.status, message.attempts, message.lease_until) == ("pending", 1, None)
    gone.refresh_from_db()
    assert not gone.is_active and "refused:" in gone.disabled_reason


def test_the_command_disables_and_rotates_an_endpoint_whose_host_no_longer_resolves(gone):
    call_command("webhooks", "disable", str(gone.pk), "--reason", "gone", stdout=StringIO())
    call_command("webhooks", "rotate-secret", str(gone.pk), stdout=StringIO())
    gone.refresh_from_db()
    assert (gone.is_active, gone.disabled_reason) == (False, "gone")
    assert gone.previous_secret is not None


def test_the_admin_action_disables_an_endpoint_whose_host_no_longer_resolves(gone, admin_client):
    admin_client.post(
        reverse("admin:audit_stream_webhookendpoint_changelist"),
        {"action": "disable_endpoints", "_selected_action": [str(gone.pk)]},
    )
    gone.refresh_from_db()
    assert not gone.is_active
