"""manage.py webhooks: each action, and clear errors for bad arguments."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from audit_stream.models import WebhookEndpoint, WebhookMessage

pytestmark = pytest.mark.django_db

URL = "http://93.184.215.14/hook"


def _run(*args):
    out = StringIO()
    call_command("webhooks", *args, stdout=out)
    return out.getvalue()


def test_add_prints_the_secret_once_and_list_masks_it():
    out = _run("add", URL, "--model", "testapp.Product", "--label", "snapshot", "--description", "crm")
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.secret in out
    assert (endpoint.filter_models, endpoint.filter_labels) == (["testapp.product"], ["snapshot"])
    listing = _run("list")
    assert endpoint.secret not in listing and endpoint.masked_secret in listing


def test_add_refuses_a_private_url():
    with pytest.raises(CommandError, match="non-public"):
        _run("add", "http://10.0.0.5/hook")
    assert not WebhookEndpoint.objects.exists()


def test_add_refuses_a_bad_rate_limit():
    with pytest.raises(CommandError, match="--rate-limit must be a positive"):
        _run("add", URL, "--rate-limit", "0")


def test_test_queues_a_message():
    endpoint = WebhookEndpoint.objects.create(url=URL)
    assert "Queued test message msg_" in _run("test", str(endpoint.pk))
    assert WebhookMessage.objects.get().event_type == "audit_stream.test"


def test_unknown_endpoint_is_a_clear_error():
    with pytest.raises(CommandError, match="There is no webhook endpoint 99"):
        _run("disable", "99")


def test_disable_and_enable():
    endpoint = WebhookEndpoint.objects.create(url=URL)
    _run("disable", str(endpoint.pk), "--reason", "maintenance")
    endpoint.refresh_from_db()
    assert (endpoint.is_active, endpoint.disabled_reason) == (False, "maintenance")
    _run("enable", str(endpoint.pk))
    endpoint.refresh_from_db()
    assert endpoint.is_active


def test_replay_a_message_and_the_dead_messages_of_an_endpoint():
    endpoint = WebhookEndpoint.objects.create(url=URL)
    dead = [
        WebhookMessage.objects.create(endpoint=endpoint, event_type="t", payload={}, status="dead")
        for _ in "ab"
    ]
    _run("replay", "--message", dead[0].webhook_id)
    assert WebhookMessage.objects.get(pk=dead[0].pk).status == "pending"
    assert "Replaying 1 dead message(s)" in _run(
        "replay", "--endpoint", str(endpoint.pk), "--since", "2000-01-01"
    )


def test_replay_refuses_a_bad_since():
    endpoint = WebhookEndpoint.objects.create(url=URL)
    with pytest.raises(CommandError, match="not a date and time"):
        _run("replay", "--endpoint", str(endpoint.pk), "--since", "yesterday")


def test_replay_refuses_an_unknown_message():
    with pytest.raises(CommandError, match="There is no webhook message msg_nope"):
        _run("replay", "--message", "msg_nope")


def test_rotate_secret_prints_the_new_secret():
    endpoint = WebhookEndpoint.objects.create(url=URL)
    old = endpoint.secret
    out = _run("rotate-secret", str(endpoint.pk))
    endpoint.refresh_from_db()
    assert endpoint.secret in out and old not in out and endpoint.previous_secret == old
