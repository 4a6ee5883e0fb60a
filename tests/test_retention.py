"""Retention: policies, prune_history, erasure, and the invariants (never unfolded, short batches)."""

import os
import pty
import subprocess
import sys
import threading
import time
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections
from django.utils import timezone

import audit_stream
from audit_stream import retention, tasks
from audit_stream.models import (
    Change,
    Context,
    RetentionRun,
    Sink,
    SinkMessage,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookMessage,
)
from audit_stream.stream import fold
from tests.procs import ROOT, child_env
from tests.testapp.models import PriceChange, Product, ProductEvent

pytestmark = pytest.mark.django_db(transaction=True)

PRODUCTS = "testapp.ProductEvent"


def _backdate(table, column, days, where="TRUE"):
    """Make rows look old (setup only: replica mode skips the append-only trigger)."""
    with connection.cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(
            f"UPDATE {table} SET {column} = {column} - make_interval(days => %s) WHERE {where}", [days]
        )
        cursor.execute("COMMIT")


def _products(n, prefix="p"):
    return Product.objects.bulk_create([Product(name=f"{prefix}{i}") for i in range(n)])


def _prune(settings, policy, **kwargs):
    settings.AUDIT_STREAM = {"RETENTION": policy}
    return retention.prune(**kwargs)


def test_max_age_deletes_old_folded_events_only(settings):
    _products(10, "old")
    fold.fold("testapp_productevent")
    _backdate("testapp_productevent", "pgh_created_at", 100)
    _products(5, "new")
    fold.fold("testapp_productevent")
    report = _prune(settings, {PRODUCTS: {"max_age": "90d"}}, targets=[PRODUCTS])
    assert report.rows["testapp_productevent"] == 10
    assert set(ProductEvent.objects.values_list("name", flat=True)) == {f"new{i}" for i in range(5)}


def test_unfolded_events_are_never_deleted(settings):
    _products(10)
    _backdate("testapp_productevent", "pgh_created_at", 100)
    report = _prune(settings, {PRODUCTS: {"max_age": "1d"}}, targets=[PRODUCTS])
    assert report.rows["testapp_productevent"] == 0
    assert ProductEvent.objects.count() == 10


def test_force_deletes_unfolded_events(settings):
    _products(10)
    _backdate("testapp_productevent", "pgh_created_at", 100)
    report = _prune(settings, {PRODUCTS: {"max_age": "1d"}}, targets=[PRODUCTS], force=True)
    assert report.rows["testapp_productevent"] == 10


def test_keep_last_keeps_the_newest_per_object(settings):
    product = Product.objects.create(name="x", price=0)
    other = Product.objects.create(name="y", price=0)
    for price in range(1, 6):
        Product.objects.filter(pk=product.pk).update(price=price)
    fold.fold("testapp_productevent")
    _prune(settings, {PRODUCTS: {"keep_last": 2}}, targets=[PRODUCTS])
    assert list(
        ProductEvent.objects.filter(pgh_obj=product).values_list("price", flat=True).order_by("pgh_id")
    ) == [4, 5]
    assert ProductEvent.objects.filter(pgh_obj=other).count() == 1


def test_keep_last_protects_recent_rows_from_max_age(settings):
    product = Product.objects.create(name="x", price=0)
    for price in range(1, 4):
        Product.objects.filter(pk=product.pk).update(price=price)
    fold.fold("testapp_productevent")
    _backdate("testapp_productevent", "pgh_created_at", 100)
    _prune(settings, {PRODUCTS: {"max_age": "30d", "keep_last": 1}}, targets=[PRODUCTS])
    assert list(ProductEvent.objects.values_list("price", flat=True)) == [3]


def test_dry_run_counts_and_deletes_nothing(settings):
    _products(7)
    Product.objects.update(stock=1)  # a second event per object
    fold.fold("testapp_productevent")
    report = _prune(settings, {PRODUCTS: {"keep_last": 1}}, targets=[PRODUCTS], dry_run=True)
    assert report.rows["testapp_productevent"] == 7
    assert ProductEvent.objects.count() == 14


def test_changes_are_pruned_by_their_policy(settings):
    """Old changes go, except each object's latest (the fold diffs the next event against it)."""
    _products(4)
    Product.objects.update(stock=1)
    fold.fold("testapp_productevent")
    _backdate("audit_stream_change", "created_at", 10)
    report = _prune(settings, {"changes": {"max_age": "7d"}}, targets=["changes"])
    assert report.rows["audit_stream_change"] == 4
    assert sorted(Change.objects.values_list("diff__stock", flat=True)) == [[0, 1]] * 4


def test_delivered_and_dead_messages_are_pruned_but_owed_ones_kept(settings):
    endpoint = WebhookEndpoint.objects.create(url="http://93.184.215.14/hook")
    for status in ("delivered", "dead", "pending", "sending"):
        message = WebhookMessage.objects.create(endpoint=endpoint, event_type="t", payload={}, status=status)
        WebhookAttempt.objects.create(message=message, status_code=500)
    _backdate("audit_stream_webhookmessage", "created_at", 60)
    report = _prune(settings, {}, targets=["webhook_messages"])  # default: 30 days
    assert report.rows["audit_stream_webhookmessage"] == 2
    assert set(WebhookMessage.objects.values_list("status", flat=True)) == {"pending", "sending"}
    assert WebhookAttempt.objects.count() == 2


def test_delivered_and_dead_sink_messages_are_pruned_but_owed_ones_kept(settings):
    """Sink messages have the webhook messages' policy: settled ones go after 30 days by default."""
    sink = Sink.objects.create(name="bus", kind="redis", target="redis://127.0.0.1:6379/3")
    for status in ("delivered", "dead", "pending", "sending"):
        SinkMessage.objects.create(sink=sink, event_type="t", payload={}, status=status)
    _backdate("audit_stream_sinkmessage", "created_at", 60)
    SinkMessage.objects.create(sink=sink, event_type="t", payload={}, status="delivered")  # a recent one
    assert _prune(settings, {}, targets=["sink_messages"], dry_run=True).rows["audit_stream_sinkmessage"] == 2
    report = _prune(settings, {}, targets=["sink_messages"])  # default: 30 days
    assert report.rows["audit_stream_sinkmessage"] == 2
    assert sorted(SinkMessage.objects.values_list("status", flat=True)) == ["delivered", "pending", "sending"]
    SinkMessage.objects.update(created_at=timezone.now() - timedelta(days=400))
    assert "audit_stream_sinkmessage" not in _prune(settings, {"sink_messages": None}).rows  # kept forever


def test_unreferenced_contexts_are_pruned(settings):
    with audit_stream.context(user="gone"):
        Product.objects.create(name="a")
    with audit_stream.context(user="kept"):
        Product.objects.create(name="b")
    Product.objects.filter(name="a").update(stock=1)  # its latest change (kept) has no context
    fold.fold("testapp_productevent")
    _backdate("testapp_productevent", "pgh_created_at", 100, where="name = 'a'")
    _backdate("audit_stream_change", "created_at", 100)
    _backdate("audit_stream_context", "updated_at", 1)
    settings.AUDIT_STREAM = {"RETENTION": {"default": {"max_age": "90d"}, "changes": {"max_age": "90d"}}}
    report = retention.prune()
    assert report.rows["audit_stream_context"] == 1
    assert list(Context.objects.values_list("metadata", flat=True)) == [{"user": "kept"}]


def test_a_concurrent_writer_is_not_blocked_by_a_prune(settings):
    """A writer never waits for more than a fraction of the prune: no lock is held across batches.

    The bound is relative to the prune's own duration, so a lock held for the
    whole prune (the writer then waits about as long as the prune) fails it on
    any machine, however fast.
    """
    _products(20_000)
    fold.fold("testapp_productevent")
    _backdate("testapp_productevent", "pgh_created_at", 100)
    latencies, stop, started_writing = [], threading.Event(), threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            started = time.monotonic()
            Product.objects.create(name=f"w{i}")
            latencies.append(time.monotonic() - started)
            started_writing.set()
            i += 1
        connections.close_all()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        started_writing.wait(timeout=30)
        began = time.monotonic()
        report = _prune(settings, {PRODUCTS: {"max_age": "90d"}}, targets=[PRODUCTS], batch_size=500)
        took = time.monotonic() - began
    finally:
        stop.set()
        thread.join()
    assert report.rows["testapp_productevent"] == 20_000
    assert len(latencies) > 10
    assert max(latencies) < took / 3, (max(latencies), took)  # 40 batches: each is 1/40 of the prune


def test_bad_overrides_are_refused():
    with pytest.raises(ValueError, match="batch_size must be a positive"):
        retention.prune(batch_size=0)
    with pytest.raises(ValueError, match="Unknown retention target"):
        retention.prune(targets=["nope"])


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"nope.Model": {"max_age": "1d"}}, "unknown key 'nope.Model'"),
        ({"default": {"max_age": "ninety days"}}, "is not a duration"),
        ({"default": {"max_age": "0d"}}, "is not a duration"),
        ({"changes": {"keep_last": 0}}, "must be a positive integer"),
        ({"changes": {"keep": 1}}, "unknown keys"),
        ({"changes": "90d"}, "must be a dict"),
    ],
)
def test_invalid_policies_are_reported(settings, policy, message):
    settings.AUDIT_STREAM = {"RETENTION": policy}
    with pytest.raises(ValueError, match=message):
        retention.policies()
    from audit_stream.checks import check_retention

    (error,) = check_retention()
    assert error.id == "audit_stream.E011" and message.split("'")[0] in error.msg


# -- the command and the beat task --------------------------------------------------------------


def _command(*args):
    out = StringIO()
    call_command("prune_history", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_command_prints_a_summary_and_records_the_run():
    _products(30)
    fold.fold("testapp_productevent")
    _backdate("testapp_productevent", "pgh_created_at", 100)
    out = _command("--model", PRODUCTS, "--max-age", "30d", "--batch-size", "7")
    assert "testapp_productevent" in out and "30" in out and "rows/s" in out
    assert ProductEvent.objects.count() == 0
    run = RetentionRun.objects.get(trigger="command")
    assert run.rows["testapp_productevent"] == 30 and run.finished_at


def test_command_dry_run_deletes_nothing():
    _products(3)
    fold.fold("testapp_productevent")
    _backdate("testapp_productevent", "pgh_created_at", 100)
    out = _command("--dry-run", "--model", PRODUCTS, "--max-age", "30d")
    assert "would delete" in out
    assert ProductEvent.objects.count() == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-age", "ninety"], "--max-age: 'ninety' is not a duration"),
        (["--keep-last", "0"], "--keep-last must be a positive integer"),
        (["--batch-size", "0"], "--batch-size must be a positive"),
        (["--model", "shop.Nope"], "is not a retention target"),
        (["--erase", "testapp.Product"], "--erase takes APP_LABEL.ModelName:PK"),
        (["--erase", "testapp.Customer:1", "--no-input"], "is neither tracked nor in the row log"),
        (["--erase", "nope:1", "--no-input"], "is not a model"),
    ],
)
def test_command_refuses_bad_arguments(args, message):
    with pytest.raises(CommandError, match=message):
        _command(*args)


def test_erase_removes_every_trace_and_records_only_that_it_happened():
    endpoint = WebhookEndpoint.objects.create(url="http://93.184.215.14/hook")
    sink = Sink.objects.create(name="bus", kind="redis", target="redis://127.0.0.1:6379/3")
    gone, kept = Product.objects.create(name="gone"), Product.objects.create(name="kept")
    Product.objects.filter(pk=gone.pk).update(price=3)
    fold.fold_all()
    assert WebhookMessage.objects.count() == 4  # 3 snapshots, 1 price_changed
    out = _command("--erase", f"testapp.Product:{gone.pk}", "--no-input")
    assert "Erased" in out
    assert not ProductEvent.objects.filter(pgh_obj_id=gone.pk).exists()
    assert not Change.objects.filter(model="testapp.product", object_id=str(gone.pk)).exists()
    assert not PriceChange.objects.filter(pgh_obj_id=gone.pk).exists()
    assert WebhookMessage.objects.count() == 1 and endpoint.messages.count() == 1
    assert SinkMessage.objects.count() == 1 and sink.messages.count() == 1
    assert ProductEvent.objects.filter(pgh_obj_id=kept.pk).exists()
    run = RetentionRun.objects.get(trigger="erasure")
    # Only table names and counts: neither the object's id nor its values.
    (counts,) = run.rows.values()
    assert list(run.rows) == ["testapp.Product"] and all(isinstance(n, int) for n in counts.values())
    assert set(counts) <= {
        "audit_stream_webhookmessage", "audit_stream_sinkmessage", "audit_stream_change",
        "testapp_productevent", "testapp_pricechange", "audit_stream_row_log",
    }  # fmt: skip


def _manage(*args, stdin=subprocess.DEVNULL, **kwargs):
    """``manage.py`` in a child process against the test database, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "django", *args], env=child_env(), cwd=ROOT, stdin=stdin,
        capture_output=True, text=True, timeout=120, **kwargs,
    )  # fmt: skip


def test_erase_asks_for_confirmation_on_a_terminal():
    """On a terminal the operator is asked; anything but "yes" deletes nothing."""
    product = Product.objects.create(name="x")
    terminal, child_end = pty.openpty()
    try:
        os.write(terminal, b"no\n")
        result = _manage("prune_history", "--erase", f"testapp.Product:{product.pk}", stdin=child_end)
    finally:
        os.close(terminal)
        os.close(child_end)
    assert result.returncode == 1 and "Erasure cancelled" in result.stderr, result.stderr
    assert ProductEvent.objects.filter(pgh_obj_id=product.pk).exists()


def test_erase_without_a_terminal_stops_with_a_clear_error_and_deletes_nothing():
    """No terminal and no --no-input: a CommandError, not an EOFError, and nothing deleted."""
    product = Product.objects.create(name="x")
    result = _manage("prune_history", "--erase", f"testapp.Product:{product.pk}")
    assert result.returncode == 1, result.stderr
    assert "CommandError: " in result.stderr and "pass --no-input" in result.stderr
    assert "EOFError" not in result.stderr and "Traceback" not in result.stderr
    assert ProductEvent.objects.filter(pgh_obj_id=product.pk).exists()


def test_erase_dry_run_counts_and_deletes_nothing():
    """--dry-run with --erase counts what would go, even with --no-input, and deletes nothing."""
    endpoint = WebhookEndpoint.objects.create(url="http://93.184.215.14/hook")
    product = Product.objects.create(name="x")
    fold.fold_all()
    out = _command("--erase", f"testapp.Product:{product.pk}", "--dry-run", "--no-input")
    assert "would delete" in out and "Nothing was deleted" in out
    assert "'testapp_productevent': 1" in out and "'audit_stream_webhookmessage': 1" in out
    assert ProductEvent.objects.filter(pgh_obj_id=product.pk).count() == 1
    assert Change.objects.filter(model="testapp.product", object_id=str(product.pk)).exists()
    assert endpoint.messages.count() == 1
    assert not RetentionRun.objects.filter(trigger="erasure").exists()


def test_beat_task_applies_the_policies_and_records_the_run(settings):
    settings.AUDIT_STREAM = {"RETENTION": {"default": {"max_age": "30d"}}}
    _products(5)
    fold.fold_all()
    _backdate("testapp_productevent", "pgh_created_at", 100)
    tasks.prune()
    run = RetentionRun.objects.get(trigger="beat")
    assert run.rows["testapp_productevent"] == 5 and not run.errors and run.finished_at
    assert timezone.now() - run.started_at < timedelta(minutes=1)
