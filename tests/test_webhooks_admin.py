"""The webhooks admin: the secret is shown once, masked afterwards; actions replay and disable."""

import pytest
from django.urls import reverse

from audit_stream.models import WebhookEndpoint, WebhookMessage

pytestmark = pytest.mark.django_db

URL = "http://93.184.215.14/hook"


def test_the_secret_is_shown_once_after_adding_then_masked(admin_client):
    response = admin_client.post(
        reverse("admin:audit_stream_webhookendpoint_add"),
        {"url": URL, "description": "crm", "is_active": "on", "filter_models": "", "filter_labels": ""},
        follow=True,
    )
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.secret in response.content.decode()
    for page in (
        reverse("admin:audit_stream_webhookendpoint_change", args=[endpoint.pk]),
        reverse("admin:audit_stream_webhookendpoint_changelist"),
    ):
        html = admin_client.get(page).content.decode()
        assert endpoint.secret not in html
        assert endpoint.masked_secret in html


def test_a_private_url_is_refused_in_the_admin(admin_client):
    response = admin_client.post(
        reverse("admin:audit_stream_webhookendpoint_add"),
        {"url": "http://127.0.0.1/x", "is_active": "on", "filter_models": "", "filter_labels": ""},
    )
    assert "non-public" in response.content.decode()
    assert not WebhookEndpoint.objects.exists()


def test_replay_action_makes_dead_messages_pending(admin_client):
    endpoint = WebhookEndpoint.objects.create(url=URL)
    message = WebhookMessage.objects.create(endpoint=endpoint, event_type="t", payload={}, status="dead")
    admin_client.post(
        reverse("admin:audit_stream_webhookmessage_changelist"),
        {"action": "replay_messages", "_selected_action": [str(message.pk)]},
    )
    message.refresh_from_db()
    assert (message.status, message.attempts) == ("pending", 0)


def test_disable_action_records_who(admin_client, admin_user):
    endpoint = WebhookEndpoint.objects.create(url=URL)
    admin_client.post(
        reverse("admin:audit_stream_webhookendpoint_changelist"),
        {"action": "disable_endpoints", "_selected_action": [str(endpoint.pk)]},
    )
    endpoint.refresh_from_db()
    assert not endpoint.is_active and admin_user.username in endpoint.disabled_reason


def test_history_admins_are_read_only(admin_client):
    for name in ("context", "change"):
        assert admin_client.get(reverse(f"admin:audit_stream_{name}_changelist")).status_code == 200
        assert admin_client.get(reverse(f"admin:audit_stream_{name}_add")).status_code == 403
