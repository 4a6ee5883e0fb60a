"""The webhooks admin: the secret is shown once, masked afterwards; actions replay and disable."""

import uuid
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from audit_stream.models import Context, WebhookEndpoint, WebhookMessage

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


def _staff(django_user_model, *codenames):
    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="audit_stream", codename__in=codenames)
    )
    return user


@pytest.mark.parametrize(
    "action",
    ["replay_dead_last_day", "replay_dead_all", "send_test_message", "disable_endpoints", "enable_endpoints"],
)
def test_endpoint_actions_need_the_change_permission(client, django_user_model, action):
    """A staff user who may only view endpoints and messages can run none of their actions."""
    client.force_login(_staff(django_user_model, "view_webhookendpoint", "view_webhookmessage"))
    endpoint = WebhookEndpoint.objects.create(url=URL)
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(is_active=False, disabled_reason="off")
    dead = WebhookMessage.objects.create(endpoint=endpoint, event_type="t", payload={}, status="dead")
    changelist = reverse("admin:audit_stream_webhookendpoint_changelist")
    assert client.get(changelist).status_code == 200
    client.post(changelist, {"action": action, "_selected_action": [str(endpoint.pk)]})
    endpoint.refresh_from_db()
    assert (endpoint.is_active, endpoint.disabled_reason) == (False, "off")
    assert list(WebhookMessage.objects.values_list("id", "status")) == [(dead.pk, "dead")]


def test_replaying_from_the_endpoint_list_also_needs_the_change_permission_on_messages(
    client, django_user_model
):
    client.force_login(_staff(django_user_model, "view_webhookendpoint", "change_webhookendpoint"))
    endpoint = WebhookEndpoint.objects.create(url=URL)
    dead = WebhookMessage.objects.create(endpoint=endpoint, event_type="t", payload={}, status="dead")
    changelist = reverse("admin:audit_stream_webhookendpoint_changelist")
    client.post(changelist, {"action": "replay_dead_all", "_selected_action": [str(endpoint.pk)]})
    assert WebhookMessage.objects.get(pk=dead.pk).status == "dead"
    client.post(changelist, {"action": "disable_endpoints", "_selected_action": [str(endpoint.pk)]})
    assert not WebhookEndpoint.objects.get(pk=endpoint.pk).is_active  # the change permission suffices here


def test_endpoint_actions_run_with_the_change_permissions(client, django_user_model):
    client.force_login(
        _staff(django_user_model, "view_webhookendpoint", "change_webhookendpoint", "change_webhookmessage")
    )
    endpoint = WebhookEndpoint.objects.create(url=URL)
    dead = WebhookMessage.objects.create(endpoint=endpoint, event_type="t", payload={}, status="dead")
    changelist = reverse("admin:audit_stream_webhookendpoint_changelist")
    client.post(changelist, {"action": "replay_dead_all", "_selected_action": [str(endpoint.pk)]})
    assert WebhookMessage.objects.get(pk=dead.pk).status == "pending"


def test_the_admin_refuses_filters_that_name_no_model_or_label(admin_client):
    response = admin_client.post(
        reverse("admin:audit_stream_webhookendpoint_add"),
        {"url": URL, "is_active": "on", "filter_models": "testapp.nope", "filter_labels": "shiped"},
    )
    html = response.content.decode()
    assert "No tracked or logged model is called &#x27;testapp.nope&#x27;" in html
    assert "No event has the label &#x27;shiped&#x27;" in html
    assert not WebhookEndpoint.objects.exists()


def _listed(admin_client, name):
    response = admin_client.get(reverse(f"admin:audit_stream_{name}_changelist"))
    return [obj.pk for obj in response.context["cl"].result_list]


def test_contexts_and_messages_are_listed_newest_first(admin_client):
    """Time order, not the order of their random UUIDs."""
    endpoint = WebhookEndpoint.objects.create(url=URL)
    now = timezone.now()
    ids = sorted(uuid.uuid4() for _ in range(5))  # UUID order opposite to time order below
    for age, pk in enumerate(ids):
        Context.objects.create(id=pk, created_at=now - timedelta(minutes=age))
        WebhookMessage.objects.create(
            id=pk, endpoint=endpoint, event_type="t", payload={}, created_at=now - timedelta(minutes=age)
        )
    assert _listed(admin_client, "context") == ids
    assert _listed(admin_client, "webhookmessage") == ids
    # and reversed, so neither UUID order can pass
    for age, pk in enumerate(reversed(ids)):
        Context.objects.filter(pk=pk).update(created_at=now - timedelta(minutes=age))
        WebhookMessage.objects.filter(pk=pk).update(created_at=now - timedelta(minutes=age))
    assert _listed(admin_client, "context") == ids[::-1]
    assert _listed(admin_client, "webhookmessage") == ids[::-1]
