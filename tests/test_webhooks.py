"""Webhook delivery in-process against a real HTTP receiver on loopback (pytest-httpserver)."""

import socket
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone
from standardwebhooks.webhooks import Webhook
from werkzeug import Response

import audit_stream
from audit_stream import exact
from audit_stream.models import WebhookAttempt, WebhookEndpoint, WebhookMessage
from audit_stream.stream import fold
from audit_stream.webhooks import delivery
from tests.procs import wait_until
from tests.testapp.models import Customer, Order, Product

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _loopback_allowed(settings):
    settings.AUDIT_STREAM = {
        "WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8"],
        "WEBHOOK_RETRY_SCHEDULE": [0, 0.05, 0.05],
        "WEBHOOK_TIMEOUT": [1, 0.5],
    }


@pytest.fixture
def endpoint(httpserver):
    return WebhookEndpoint.objects.create(url=httpserver.url_for("/hook"), description="test")


def _query(sql):
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def _requests(httpserver):
    return [request for request, _ in httpserver.log]


def _deliver_until_settled(endpoint, timeout=10):
    """Deliver (and retry) until no message of the endpoint is still pending."""
    deadline = time.monotonic() + timeout
    while WebhookMessage.objects.filter(endpoint=endpoint, status__in=["pending", "sending"]).exists():
        assert time.monotonic() < deadline, "messages still pending"
        delivery.deliver(endpoint.pk)
        time.sleep(0.02)


def test_a_change_is_delivered_with_a_verifiable_signature(httpserver, endpoint):
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    with audit_stream.context(user="ada") as ctx:
        product = Product.objects.create(name="lamp", price=3)
    fold.fold_all()
    assert delivery.deliver(endpoint.pk).delivered == 1

    (request,) = _requests(httpserver)
    payload = Webhook(endpoint.secret).verify(request.get_data(), dict(request.headers))
    assert payload["type"] == "testapp.product.snapshot"
    assert payload["data"]["object_id"] == str(product.pk)
    assert payload["data"]["diff"]["price"] == [None, 3]
    assert payload["data"]["context"] == {"id": str(ctx.id), "metadata": {"user": "ada"}}
    assert request.headers["webhook-id"].startswith("msg_")
    message = WebhookMessage.objects.get()
    assert (message.status, message.attempts) == ("delivered", 1)
    assert WebhookAttempt.objects.get().status_code == 200


def test_messages_are_recorded_in_the_folds_transaction(endpoint):
    Product.objects.create(name="lamp")
    assert not WebhookMessage.objects.exists()
    result = fold.fold("testapp_productevent")
    assert result.endpoints == {endpoint.pk}
    assert WebhookMessage.objects.get().change_id is not None


def test_filters_by_model_and_label_are_respected(httpserver):
    url = httpserver.url_for("/hook")
    orders = WebhookEndpoint.objects.create(url=url, filter_models=["testapp.Order"])
    inserts = WebhookEndpoint.objects.create(url=url, filter_labels=["after_insert"])
    inactive = WebhookEndpoint.objects.create(url=url, is_active=False)
    customer = Customer.objects.create(email="c@example.com", name="C")
    order = Order.objects.create(customer=customer)
    Order.objects.filter(pk=order.pk).update(status="paid")
    Product.objects.create(name="lamp")
    fold.fold_all()
    assert set(WebhookMessage.objects.filter(endpoint=orders).values_list("event_type", flat=True)) == {
        "testapp.order.after_insert", "testapp.order.after_update", "testapp.order.before_update",
        "testapp.order.after_insert_or_update",
    }  # fmt: skip
    assert set(WebhookMessage.objects.filter(endpoint=inserts).values_list("event_type", flat=True)) == {
        "testapp.order.after_insert"
    }
    assert not WebhookMessage.objects.filter(endpoint=inactive).exists()


def test_a_500_is_retried_with_the_same_webhook_id(httpserver, endpoint):
    answers = iter([Response("boom", status=500), Response("still", status=503), Response("ok")])
    httpserver.expect_request("/hook").respond_with_handler(lambda request: next(answers))
    Product.objects.create(name="lamp")
    fold.fold_all()
    _deliver_until_settled(endpoint)
    ids = {request.headers["webhook-id"] for request in _requests(httpserver)}
    assert len(_requests(httpserver)) == 3 and len(ids) == 1
    message = WebhookMessage.objects.get()
    assert (message.status, message.attempts) == ("delivered", 3)
    assert [a.status_code for a in WebhookAttempt.objects.order_by("attempted_at")] == [500, 503, 200]


def test_a_receiver_that_stays_down_makes_the_message_dead_then_replay_delivers(httpserver):
    endpoint = WebhookEndpoint.objects.create(url="http://127.0.0.1:9/hook")  # nothing listens on port 9
    Product.objects.create(name="lamp")
    fold.fold_all()
    _deliver_until_settled(endpoint)
    message = WebhookMessage.objects.get()
    assert (message.status, message.attempts) == ("dead", 3)
    assert "ConnectError" in message.last_error

    httpserver.expect_request("/hook").respond_with_data("ok")
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(url=httpserver.url_for("/hook"))
    assert delivery.replay_failed(endpoint, since=timezone.now() - timedelta(hours=1)) == 1
    _deliver_until_settled(endpoint)
    message.refresh_from_db()
    assert message.status == "delivered"
    assert len(_requests(httpserver)) == 1


def test_a_slow_receiver_times_out(httpserver, endpoint):
    def slow(request):
        time.sleep(1.5)
        return Response("late")

    httpserver.expect_request("/hook").respond_with_handler(slow)
    Product.objects.create(name="lamp")
    fold.fold_all()
    delivery.deliver(endpoint.pk)
    attempt = WebhookAttempt.objects.get()
    assert attempt.error.startswith("timeout") and attempt.status_code is None
    assert WebhookMessage.objects.get().status == "pending"
    # The single-threaded receiver logs the request once it has answered: then the next test may use it.
    wait_until(lambda: len(httpserver.log) == 1, timeout=10, message="the receiver to finish")


def test_a_redirect_is_not_followed(httpserver, endpoint):
    httpserver.expect_request("/hook").respond_with_data(
        "", status=302, headers={"Location": "http://10.0.0.1/"}
    )
    Product.objects.create(name="lamp")
    fold.fold_all()
    delivery.deliver(endpoint.pk)
    attempt = WebhookAttempt.objects.get()
    assert (attempt.status_code, attempt.succeeded) == (302, False)
    assert "redirect to http://10.0.0.1/ not followed" in attempt.error
    assert len(_requests(httpserver)) == 1


def test_410_gone_disables_the_endpoint_at_once(httpserver, endpoint):
    httpserver.expect_request("/hook").respond_with_data("gone", status=410)
    Product.objects.create(name="a")
    fold.fold_all()
    delivery.deliver(endpoint.pk)
    endpoint.refresh_from_db()
    assert not endpoint.is_active and "410 Gone" in endpoint.disabled_reason
    Product.objects.create(name="b")
    fold.fold_all()
    delivery.deliver(endpoint.pk)
    assert len(_requests(httpserver)) == 1  # nothing more is sent to a disabled endpoint
    # The first message stays owed (pending); changes made while disabled are not queued.
    assert list(WebhookMessage.objects.values_list("status", flat=True)) == ["pending"]


def test_an_endpoint_failing_for_long_enough_is_disabled(httpserver, endpoint, settings):
    settings.AUDIT_STREAM = {**settings.AUDIT_STREAM, "WEBHOOK_DISABLE_AFTER": 0.3}
    httpserver.expect_request("/hook").respond_with_data("no", status=500)
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(5)])
    fold.fold_all()
    delivery.deliver(endpoint.pk)
    endpoint.refresh_from_db()
    assert endpoint.is_active  # a burst of failures alone does not disable
    assert endpoint.disabled_reason == "" and endpoint.consecutive_failures == 5
    failing_long_enough = (
        "SELECT now() - failing_since > interval '0.3 seconds' FROM audit_stream_webhookendpoint"
    )
    wait_until(lambda: _query(failing_long_enough), timeout=10, message="0.3 s of failures")
    Product.objects.create(name="later")
    fold.fold_all()
    deadline = time.monotonic() + 10
    while endpoint.is_active and time.monotonic() < deadline:
        delivery.deliver(endpoint.pk)
        endpoint.refresh_from_db()
    assert not endpoint.is_active
    # Its messages are not dropped: they wait, visible, until it is enabled again.
    assert WebhookMessage.objects.filter(endpoint=endpoint, status="pending").exists()
    assert endpoint.disabled_reason.startswith("Every attempt failed for 0:00:0")
    assert "in a row); last: HTTP 500" in endpoint.disabled_reason


def test_a_success_resets_the_failure_streak(httpserver, endpoint):
    answers = iter([Response("no", status=500), Response("ok")])
    httpserver.expect_request("/hook").respond_with_handler(lambda request: next(answers))
    Product.objects.create(name="lamp")
    fold.fold_all()
    _deliver_until_settled(endpoint)
    endpoint.refresh_from_db()
    assert (endpoint.consecutive_failures, endpoint.failing_since) == (0, None)


def test_retry_after_is_honoured(httpserver, endpoint):
    httpserver.expect_request("/hook").respond_with_data("later", status=429, headers={"Retry-After": "120"})
    Product.objects.create(name="lamp")
    fold.fold_all()
    delivery.deliver(endpoint.pk)
    message = WebhookMessage.objects.get()
    wait = (message.next_attempt_at - timezone.now()).total_seconds()
    assert 110 < wait <= 120


def test_secret_rotation_signs_with_both_secrets(httpserver, endpoint):
    httpserver.expect_request("/hook").respond_with_data("ok")
    old = endpoint.secret
    new = endpoint.rotate_secret(overlap=timedelta(hours=1))
    Product.objects.create(name="lamp")
    fold.fold_all()
    delivery.deliver(endpoint.pk)
    (request,) = _requests(httpserver)
    assert len(request.headers["webhook-signature"].split()) == 2
    for secret in (old, new):
        Webhook(secret).verify(request.get_data(), dict(request.headers))


def test_after_the_overlap_only_the_new_secret_signs(httpserver, endpoint):
    httpserver.expect_request("/hook").respond_with_data("ok")
    endpoint.rotate_secret(overlap=timedelta(seconds=-1))
    Product.objects.create(name="lamp")
    fold.fold_all()
    delivery.deliver(endpoint.pk)
    (request,) = _requests(httpserver)
    assert len(request.headers["webhook-signature"].split()) == 1


def test_a_url_that_became_unsafe_is_refused_at_send_time(httpserver, endpoint, settings):
    Product.objects.create(name="lamp")
    fold.fold_all()
    settings.AUDIT_STREAM = {**settings.AUDIT_STREAM, "WEBHOOK_ALLOWED_NETWORKS": []}
    delivery.deliver(endpoint.pk)
    attempts = list(WebhookAttempt.objects.all())  # a slow run may retry within the call
    assert attempts and all(a.error.startswith("refused:") for a in attempts)
    assert not _requests(httpserver)


def test_payload_body_is_the_signed_json_with_exact_numbers(httpserver, endpoint):
    httpserver.expect_request("/hook").respond_with_data("ok")
    Product.objects.create(name="lamp", price=Decimal("12345678.10"))
    fold.fold_all()
    delivery.deliver(endpoint.pk)
    (request,) = _requests(httpserver)
    assert exact.loads(request.get_data()) == WebhookMessage.objects.get().payload
    assert b'"price": 12345678.10' in request.get_data()
    assert request.headers["content-type"] == "application/json"


def test_send_test_queues_a_test_message(httpserver, endpoint):
    httpserver.expect_request("/hook").respond_with_data("ok")
    delivery.send_test(endpoint)
    delivery.deliver(endpoint.pk)
    (request,) = _requests(httpserver)
    assert (
        Webhook(endpoint.secret).verify(request.get_data(), dict(request.headers))["type"]
        == "audit_stream.test"
    )


def test_the_secret_never_appears_in_logs_attempts_or_errors(httpserver, endpoint, caplog):
    """After creation the secret is only ever used to sign: never logged or stored elsewhere."""
    caplog.set_level("DEBUG")
    answers = iter(
        [Response("bad", status=500), Response("", status=302, headers={"Location": "/x"}), Response("ok")]
    )
    httpserver.expect_request("/hook").respond_with_handler(lambda request: next(answers))
    Product.objects.create(name="lamp")
    fold.fold_all()
    _deliver_until_settled(endpoint)
    stored = [
        *WebhookAttempt.objects.values_list("error", "response_excerpt"),
        *WebhookMessage.objects.values_list("last_error", "payload"),
    ]
    body = endpoint.secret.removeprefix("whsec_")
    for text in [caplog.text, str(stored), endpoint.disabled_reason]:
        assert body not in text
    assert any(request.headers["webhook-signature"] for request in _requests(httpserver))


@pytest.fixture
def rebinding_dns(monkeypatch):
    """``rebind.test`` answers with each address of ``answers`` in turn, then the last one forever.

    The resolver is the only stand-in: the check, the connection and the receiver are real.
    """
    real = socket.getaddrinfo
    answers: list[str] = []
    asked: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host != "rebind.test":
            return real(host, port, *args, **kwargs)
        address = answers.pop(0) if len(answers) > 1 else answers[0]
        asked.append(address)
        return real(address, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers, asked


def test_dns_rebinding_after_the_check_cannot_redirect_the_request(httpserver, rebinding_dns):
    """The request goes to the address that was checked, not to a second, later answer."""
    answers, asked = rebinding_dns
    httpserver.expect_request("/hook").respond_with_data("ok")
    answers[:] = ["127.0.0.1"]
    endpoint = WebhookEndpoint.objects.create(url=f"http://rebind.test:{httpserver.port}/hook")
    delivery.send_test(endpoint)
    answers[:] = ["127.0.0.1", "10.255.255.1"]  # checked once as loopback, then it rebinds
    before = len(asked)
    assert delivery.deliver(endpoint.pk).delivered == 1
    assert asked[before:] == ["127.0.0.1"]  # resolved once, for the check, and never again
    (request,) = _requests(httpserver)
    assert request.headers["host"] == f"rebind.test:{httpserver.port}"
    assert WebhookAttempt.objects.get().status_code == 200


def test_dns_rebinding_to_a_private_address_is_refused_at_send_time(httpserver, rebinding_dns):
    """A host that resolved to an allowed address when saved and to the metadata service now is refused."""
    answers, _ = rebinding_dns
    answers[:] = ["127.0.0.1"]
    endpoint = WebhookEndpoint.objects.create(url=f"http://rebind.test:{httpserver.port}/hook")
    delivery.send_test(endpoint)
    answers[:] = ["169.254.169.254"]
    delivery.deliver(endpoint.pk)
    attempts = list(WebhookAttempt.objects.all())  # a slow run may retry within the call
    assert attempts and all(a.error.startswith("refused:") and "169.254.169.254" in a.error for a in attempts)
    assert not _requests(httpserver)
