"""One delivery task queued or running at a time per endpoint and per sink.

A delivery keeps its pending mark (audit_stream.stream.pending) while it
runs: work arriving meanwhile sends no second task, which would only take a
worker process from the fold. Once done, it releases the mark and enqueues
the next run if anything is due. Real PostgreSQL, a real HTTP receiver, this
machine's Redis (the marks, a sink, and a broker database of the test's own).
"""

import os
import signal
import subprocess
import sys
import time

import pytest
import redis
from celery import Celery
from werkzeug import Response

from audit_stream import tasks
from audit_stream.models import Sink, SinkMessage, WebhookEndpoint
from audit_stream.stream import fold, pending
from audit_stream.webhooks import delivery
from tests.procs import ROOT, wait_until
from tests.settings import REDIS_URL
from tests.test_sinks import redis_sink  # noqa: F401 (a fixture)
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db(transaction=True)

# A database of the suite's Redis that no worker of the suite (15), sink (3) or benchmark (13, 14) uses.
BROKER_URL = REDIS_URL.rsplit("/", 1)[0] + "/12"


@pytest.fixture
def endpoint(httpserver, settings):
    settings.AUDIT_STREAM = {"WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8"], "WEBHOOK_TIMEOUT": [1, 1]}
    httpserver.expect_request("/hook").respond_with_data("ok")
    endpoint = WebhookEndpoint.objects.create(url=httpserver.url_for("/hook"))
    yield endpoint
    pending.release(tasks.DELIVER, endpoint.pk)


@pytest.fixture
def queue():
    """A Celery app of the test's own on Redis, current while the test runs; yields its queue."""
    app = Celery("one-at-a-time", broker=BROKER_URL, set_as_current=False)
    previous = tasks.deliver._app
    app.set_current()
    queue = redis.Redis.from_url(BROKER_URL)
    queue.delete("celery")
    yield queue
    previous.set_current()
    queue.delete("celery")


def _owed(n: int) -> None:
    """``n`` products written and folded (no task sent): ``n`` messages owed to each subscriber."""
    for i in range(n):
        Product.objects.create(name=f"p{i}", price=i)
    fold.fold("testapp_productevent")


def test_a_delivery_sends_no_second_task_for_work_arriving_while_it_runs(endpoint, httpserver, queue):
    _owed(2)
    sent_meanwhile = []

    def receive(request):  # runs while the delivery does
        sent_meanwhile.append(tasks.enqueue(tasks.deliver, endpoint.pk))
        return Response("ok")

    httpserver.clear_all_handlers()
    httpserver.expect_request("/hook").respond_with_handler(receive)
    assert pending.claim(tasks.DELIVER, endpoint.pk)  # as the fold's enqueue left it
    assert tasks.deliver(endpoint.pk)["delivered"] == 2
    assert sent_meanwhile == [False, False]
    assert queue.llen("celery") == 0


def test_a_delivery_releases_its_mark_when_done(endpoint):
    _owed(1)
    assert pending.claim(tasks.DELIVER, endpoint.pk)
    tasks.deliver(endpoint.pk)
    assert pending.claim(tasks.DELIVER, endpoint.pk)  # free: the next one can be sent


def test_a_delivery_that_raises_releases_its_mark(endpoint):
    def run(key):
        raise ConnectionResetError

    assert pending.claim(tasks.DELIVER, endpoint.pk)
    with pytest.raises(ConnectionResetError):
        tasks._delivery(tasks.deliver, endpoint.pk, run, delivery.has_due)
    assert pending.claim(tasks.DELIVER, endpoint.pk)


def test_a_delivery_that_ends_with_messages_due_enqueues_the_next(endpoint, queue):
    """As when messages became due after its last claim, while its mark kept a second task from
    being sent: the next run is enqueued once the mark is released."""
    _owed(1)
    result = tasks._delivery(tasks.deliver, endpoint.pk, delivery.DeliveryResult, delivery.has_due)
    assert result.delivered == 0  # a run that claimed nothing: the message is still due
    assert queue.llen("celery") == 1


def test_a_delivery_that_leaves_nothing_due_enqueues_nothing(endpoint, queue):
    _owed(2)
    assert tasks.deliver(endpoint.pk)["delivered"] == 2
    assert queue.llen("celery") == 0


def test_a_delivery_to_a_disabled_endpoint_with_messages_pending_enqueues_nothing(endpoint, queue):
    """Its messages wait while it is disabled: a next run would find them again, and again."""
    _owed(2)
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(is_active=False, disabled_reason="by hand")
    assert tasks.deliver(endpoint.pk)["delivered"] == 0
    assert queue.llen("celery") == 0


def test_a_sink_delivery_releases_its_mark_when_done(redis_sink):  # noqa: F811
    _owed(2)
    assert pending.claim(tasks.DELIVER_SINK, redis_sink.pk)
    assert tasks.deliver_sink(redis_sink.pk)["delivered"] == 2
    assert SinkMessage.objects.filter(sink=redis_sink, status="delivered").count() == 2
    assert pending.claim(tasks.DELIVER_SINK, redis_sink.pk)
    pending.release(tasks.DELIVER_SINK, redis_sink.pk)


def _mark(task: str, key: object) -> str:
    return f"audit_stream:{task}:{key}"


def test_a_running_deliverys_mark_is_renewed_while_it_runs(monkeypatch):
    monkeypatch.setattr(pending, "HELD_TTL", 1.0)
    monkeypatch.setattr(pending, "HELD_RENEW", 0.2)
    client, name = redis.Redis.from_url(REDIS_URL), _mark(tasks.DELIVER, 424242)
    started = time.monotonic()
    with pending.held(tasks.DELIVER, 424242):
        # Three times the expiry, the mark still there: renewed, not set once.
        wait_until(lambda: time.monotonic() - started > 3 * pending.HELD_TTL and client.exists(name), 10)
        assert client.pttl(name) > 0
    assert not client.exists(name)


def test_a_worker_killed_mid_delivery_holds_its_endpoint_for_seconds_only():
    """The mark of a process killed with kill -9 expires within HELD_TTL (the renewing thread died
    with it), instead of the queued mark's 30 s."""
    client, name = redis.Redis.from_url(REDIS_URL), _mark(tasks.DELIVER, 434343)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import django, sys; django.setup()\n"
         "from audit_stream.stream import pending\n"
         "with pending.held('audit_stream.deliver', 434343):\n"
         "    print('held', flush=True); sys.stdin.read()"],
        cwd=ROOT, env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "REDIS_URL": REDIS_URL},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == b"held\n"
        assert client.exists(name)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    killed = time.monotonic()
    wait_until(lambda: not client.exists(name), timeout=pending.HELD_TTL + 2, message="the mark to expire")
    assert time.monotonic() - killed <= pending.HELD_TTL + 2


def test_a_delivery_to_a_disabled_sink_with_messages_pending_enqueues_nothing(redis_sink, queue):  # noqa: F811
    _owed(2)
    Sink.objects.filter(pk=redis_sink.pk).update(is_active=False)
    assert tasks.deliver_sink(redis_sink.pk)["delivered"] == 0
    assert queue.llen("celery") == 0
