"""The stream end to end: real PostgreSQL, Redis, Celery worker and listener processes."""

import os
import time

import psycopg
import pytest
import redis
from django.db import connection
from standardwebhooks.webhooks import Webhook

from audit_stream.dashboard import queries
from audit_stream.models import Change, Heartbeat, WebhookEndpoint, WebhookMessage
from audit_stream.stream import wakeup
from tests.procs import start_beat, start_listener, start_worker, wait_until
from tests.testapp.models import Product, ProductEvent

pytestmark = pytest.mark.django_db(transaction=True)

PRODUCTS = "testapp_productevent"


@pytest.fixture
def procs(tmp_path, request):
    """Start processes with procs.worker()/procs.listener(); all are stopped at the end."""
    redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")).flushdb()
    started = []

    class _Procs:
        def worker(self, **kwargs):
            started.append(start_worker(tmp_path, **kwargs))
            return started[-1]

        def listener(self, **kwargs):
            started.append(start_listener(tmp_path, **kwargs))
            return started[-1]

        def beat(self, **kwargs):
            started.append(start_beat(tmp_path, **kwargs))
            return started[-1]

    yield _Procs()
    for proc in started:
        proc.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for proc in started:
            print(f"--- {proc.name}\n{proc.output()[-4000:]}")


def _broker():
    return redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"))


def _changes(table=PRODUCTS):
    return Change.objects.filter(event_table=table).count()


def _assert_folded_exactly_once(table=PRODUCTS, model=ProductEvent):
    events = model.objects.count()
    wait_until(lambda: _changes(table) >= events, timeout=60, message=f"{events} changes")
    assert _changes(table) == events
    assert Change.objects.filter(event_table=table).values("event_id").distinct().count() == events


def test_a_commit_becomes_a_change(procs):
    procs.worker()
    procs.listener()
    product = Product.objects.create(name="lamp", price=3)
    change = wait_until(lambda: Change.objects.for_object(product).first(), timeout=10, message="the change")
    assert change.diff["price"] == [None, 3]


def test_notify_wakes_the_worker_quickly(procs):
    """With NOTIFY, a change lands well before the poll interval."""
    procs.worker()
    procs.listener(settings={"POLL_INTERVAL": 30})
    wait_until(wakeup.is_armed, timeout=10, message="the listener to arm the wake-up")
    started = time.monotonic()
    Product.objects.create(name="fast")
    wait_until(lambda: _changes() == 1, timeout=10)
    assert time.monotonic() - started < 5


def test_poll_only_mode_folds_without_notify(procs):
    settings = {"NOTIFY": False, "POLL_INTERVAL": 0.5}
    procs.worker(settings=settings)
    procs.listener(settings=settings)
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(100)])
    _assert_folded_exactly_once()
    assert not wakeup.is_armed()


def test_missed_notifications_are_recovered_by_the_poll(procs):
    """Events committed while no listener ran are folded once it starts."""
    procs.worker()
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(200)])
    # Nothing folds them yet: no task is queued (nobody listened) and none has run.
    assert _broker().llen("celery") == 0 and _changes() == 0
    procs.listener()
    _assert_folded_exactly_once()


def test_a_late_committing_transaction_loses_nothing(procs):
    procs.worker()
    procs.listener(settings={"POLL_INTERVAL": 0.5})
    late = psycopg.connect(**connection.get_connection_params())
    late.execute("INSERT INTO testapp_product (name, price, stock, updated_at) VALUES ('late', 1, 0, now())")
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(50)])
    wait_until(lambda: _changes() == 50, timeout=20)
    late.commit()
    late.close()
    _assert_folded_exactly_once()
    assert Change.objects.filter(snapshot__name="late").count() == 1


def test_killing_the_worker_mid_fold_loses_and_duplicates_nothing(procs):
    settings = {"FOLD_BATCH_SIZE": 200, "POLL_INTERVAL": 0.5}
    worker = procs.worker(settings=settings)
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(40_000)])
    procs.listener(settings=settings)
    wait_until(lambda: _changes() > 0, timeout=30, interval=0.01, message="the fold to start")
    worker.kill()  # kill -9 of the whole worker, mid-fold
    assert 0 < _changes() < 40_000
    procs.worker(name="worker2", settings=settings)
    _assert_folded_exactly_once()


def test_two_workers_fold_each_event_exactly_once(procs):
    settings = {"FOLD_BATCH_SIZE": 300, "POLL_INTERVAL": 0.3}
    procs.worker(name="w1", settings=settings)
    procs.worker(name="w2", settings=settings)
    procs.listener(settings=settings)
    for round_ in range(20):
        Product.objects.bulk_create([Product(name=f"r{round_}-{i}") for i in range(100)])
        Product.objects.filter(name__startswith=f"r{round_}-").update(stock=round_ + 1)
    _assert_folded_exactly_once()


def test_the_listener_reconnects_after_its_connection_is_killed(procs):
    procs.worker()
    listener = procs.listener(settings={"POLL_INTERVAL": 0.5})
    Product.objects.create(name="before")
    wait_until(lambda: _changes() == 1, timeout=10)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'audit_stream listener'"
        )
        assert cursor.fetchall(), "the listener's connection was not found"
    size = len(listener.output())
    listener.wait_ready(after=size, timeout=30)  # active again
    Product.objects.create(name="after")
    wait_until(lambda: _changes() == 2, timeout=10)


def test_a_standby_listener_takes_over(procs):
    procs.worker()
    first = procs.listener(settings={"POLL_INTERVAL": 0.5})
    second = procs.listener(name="standby", settings={"POLL_INTERVAL": 0.5}, ready=False)
    wait_until(lambda: "standing by" in second.output(), timeout=30)
    first.kill()
    second.wait_ready(timeout=30)
    Product.objects.create(name="after failover")
    wait_until(lambda: _changes() == 1, timeout=10)


def test_the_listener_stops_cleanly_on_sigterm(procs):
    listener = procs.listener()
    started = time.monotonic()
    listener.stop()
    assert listener.popen.returncode == 0
    assert time.monotonic() - started < 5
    assert "listener: stopped" in listener.output()


def test_a_change_reaches_a_webhook_receiver(procs, httpserver, settings):
    """Commit, fold, deliver: the receiver gets a signed message, through real processes."""
    allow = {"WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8"]}
    settings.AUDIT_STREAM = allow
    httpserver.expect_request("/hook").respond_with_data("ok")
    endpoint = WebhookEndpoint.objects.create(url=httpserver.url_for("/hook"))
    procs.worker(settings=allow)
    procs.listener(settings=allow)
    Product.objects.create(name="lamp", price=2)
    wait_until(lambda: httpserver.log, timeout=15, message="the webhook")
    request, _ = httpserver.log[0]
    payload = Webhook(endpoint.secret).verify(request.get_data(), dict(request.headers))
    assert payload["type"] == "testapp.product.snapshot"
    wait_until(lambda: WebhookMessage.objects.filter(status="delivered").exists(), timeout=10)


def test_a_write_to_a_table_logged_by_initlogging_becomes_a_change(procs):
    from io import StringIO

    from django.core.management import call_command

    from tests.testapp.models import Supplier

    call_command("initlogging", stdout=StringIO())
    try:
        procs.worker()
        procs.listener()
        supplier = Supplier.objects.create(name="Acme")
        change = wait_until(
            lambda: Change.objects.for_object(supplier).first(), timeout=10, message="the change"
        )
        assert (change.event_table, change.label, change.diff["name"]) == (
            "audit_stream_row_log",
            "insert",
            [None, "Acme"],
        )
    finally:
        call_command("droplogging", stdout=StringIO())


def test_beat_reports_itself_once_whichever_worker_runs_its_sweep(procs):
    """One heartbeat row for beat, with beat's own pid; none in the name of the workers that ran the sweep."""
    worker = procs.worker(concurrency=2)
    beat = procs.beat(sweep_seconds=0.3)
    wait_until(
        lambda: worker.output().count("Task audit_stream.sweep[") >= 2 * 6,  # received + succeeded, 6 sweeps
        timeout=60,
        message="six sweeps",
    )
    rows = list(Heartbeat.objects.filter(kind__startswith="beat").values_list("kind", "pid"))
    assert rows == [("beat", beat.popen.pid)]
    beats = [p for p in queries.processes() if p.kind.startswith("beat")]
    assert len(beats) == 1 and beats[0].alive


def test_a_sweep_sent_by_hand_is_not_taken_for_beat(procs):
    """Only beat names itself: a sweep queued from another process records no beat heartbeat."""
    from celery import Celery

    import audit_stream.tasks  # noqa: F401 - its publish hook is connected here too, as in a web process

    worker = procs.worker()
    sender = Celery(
        "by-hand", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"), set_as_current=False
    )
    sender.send_task("audit_stream.sweep")
    wait_until(lambda: "Task audit_stream.sweep[" in worker.output() and "succeeded" in worker.output(),
               timeout=30, message="the sweep to run")  # fmt: skip
    assert not Heartbeat.objects.filter(kind="beat").exists()
