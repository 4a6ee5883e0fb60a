"""manage.py webhooks: each action, and clear errors for bad arguments."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from audit_stream.models import WebhookAttempt, WebhookEndpoint, WebhookMessage

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


def test_replay_without_since_replays_every_dead_message_of_the_endpoint():
    """--endpoint alone means every dead message, however old."""
    endpoint = WebhookEndpoint.objects.create(url=URL)
    old = WebhookMessage.objects.create(endpoint=endpoint, event_type="t", payload={}, status="dead")
    WebhookMessage.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=3650))
    WebhookMessage.objects.create(endpoint=endpoint, event_type="t", payload={}, status="dead")
    WebhookMessage.objects.create(endpoint=endpoint, event_type="t", payload={}, status="delivered")
    assert "Replaying 2 dead message(s)" in _run("replay", "--endpoint", str(endpoint.pk))
    assert list(WebhookMessage.objects.filter(status="dead")) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "testapp.Nope"], "No tracked or logged model is called 'testapp.Nope'"),
        (["--model", "Product"], 'write "app_label.model", one of: .*testapp.product'),
        (["--label", "shiped"], "No event has the label 'shiped'; labels in use: .*shipped"),
    ],
)
def test_add_refuses_filters_that_name_no_model_or_label(args, message):
    """A filter that could never match is refused, with the choices named."""
    with pytest.raises(CommandError, match=message):
        _run("add", URL, *args)
    assert not WebhookEndpoint.objects.exists()


def test_add_accepts_filters_in_any_case():
    _run("add", URL, "--model", "testapp.Product", "--model", "TESTAPP.order", "--label", "snapshot")
    assert WebhookEndpoint.objects.get().filter_models == ["testapp.product", "testapp.order"]


def test_delete_removes_the_endpoint_its_messages_and_attempts():
    endpoint, other = WebhookEndpoint.objects.create(url=URL), WebhookEndpoint.objects.create(url=URL)
    for ep in (endpoint, other):
        message = WebhookMessage.objects.create(endpoint=ep, event_type="t", payload={})
        WebhookAttempt.objects.create(message=message, error="HTTP 500")
    out = _run("delete", str(endpoint.pk), "--no-input")
    assert f"Deleted endpoint {endpoint.pk}" in out and "1 message(s)" in out
    assert list(WebhookEndpoint.objects.all()) == [other]
    assert WebhookMessage.objects.get().endpoint == other
    assert WebhookAttempt.objects.get().message.endpoint == other


def test_delete_without_no_input_and_without_a_terminal_deletes_nothing():
    """Under pytest stdin is no terminal: the command refuses instead of guessing."""
    endpoint = WebhookEndpoint.objects.create(url=URL)
    with pytest.raises(CommandError, match="no terminal to ask on"):
        _run("delete", str(endpoint.pk))
    assert WebhookEndpoint.objects.filter(pk=endpoint.pk).exists()


def test_delete_of_an_unknown_endpoint_is_a_clear_error():
    with pytest.raises(CommandError, match="There is no webhook endpoint 99"):
        _run("delete", "99", "--no-input")
