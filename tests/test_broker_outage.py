"""A task that runs while Redis or the broker is unreachable finishes its work.

The fold and the deliveries enqueue follow-ups as they go (a delivery of what a
batch recorded, their own next run). With Redis (the pending marks) or the
broker down, those follow-ups are left to the listener's poll and the sweep,
which find the same work in the database: the running task does not fail
halfway. Run in-process, against a port where nothing listens, as after a
Redis restart.
"""

import logging
import socket

import pytest
from celery import Celery

from audit_stream import tasks
from audit_stream.models import Change, WebhookEndpoint, WebhookMessage
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db(transaction=True)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: nothing listens there


@pytest.fixture
def unreachable():
    """A Redis URL where nothing listens."""
    return f"redis://127.0.0.1:{_closed_port()}/0"


@pytest.fixture
def endpoint(httpserver, settings):
    settings.AUDIT_STREAM = {"WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8"], "WEBHOOK_TIMEOUT": [1, 1]}
    httpserver.expect_request("/hook").respond_with_data("ok")
    return WebhookEndpoint.objects.create(url=httpserver.url_for("/hook"))


@pytest.fixture
def redis_down(settings, endpoint, unreachable):
    """The pending marks' Redis unreachable."""
    settings.AUDIT_STREAM = {**settings.AUDIT_STREAM, "REDIS_URL": unreachable}


@pytest.fixture
def broker_down(unreachable):
    """The pending marks' Redis up (this machine's), the Celery broker unreachable."""
    app = Celery("outage", broker=unreachable, set_as_current=False)
    app.conf.broker_connection_retry = False
    app.conf.broker_connection_max_retries = 0
    app.conf.task_publish_retry = False
    app.conf.broker_transport_options = {"max_retries": 0}
    previous = tasks.fold._app  # shared tasks send through the current app
    app.set_current()
    yield
    previous.set_current()


def _write(n: int) -> None:
    for i in range(n):
        Product.objects.create(name=f"p{i}", price=i)


def test_a_fold_with_redis_unreachable_folds_everything_and_records_its_messages(redis_down, caplog):
    _write(5)
    with caplog.at_level(logging.WARNING, logger="audit_stream.stream"):
        result = tasks.fold("testapp_productevent")
    assert result["folded"] == 5
    assert Change.objects.filter(event_table="testapp_productevent").count() == 5
    assert WebhookMessage.objects.filter(status="pending").count() == 5  # owed: the listener enqueues them
    assert "could not enqueue audit_stream.deliver" in caplog.text


def test_a_delivery_with_redis_unreachable_delivers_what_is_due(endpoint, redis_down):
    _write(3)
    tasks.fold("testapp_productevent")
    result = tasks.deliver(endpoint.pk)
    assert result["delivered"] == 3
    assert WebhookMessage.objects.filter(status="delivered").count() == 3


def test_a_fold_with_the_broker_unreachable_folds_everything_and_records_its_messages(
    endpoint, broker_down, caplog
):
    _write(4)
    with caplog.at_level(logging.WARNING, logger="audit_stream.stream"):
        result = tasks.fold("testapp_productevent")
    assert result["folded"] == 4
    assert Change.objects.filter(event_table="testapp_productevent").count() == 4
    assert WebhookMessage.objects.filter(status="pending").count() == 4
    assert "could not enqueue audit_stream.deliver" in caplog.text
