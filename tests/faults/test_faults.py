"""Fault tests: the guarantees hold while processes die, servers restart and receivers misbehave.

Each test runs a steady writer (or a burst), the real listener and Celery
worker, and (where deliveries matter) a webhook receiver, injects its fault,
then counts with ``stack.assert_consistent()``: every event folded exactly
once, every message delivered at least once or dead, no webhook-id reused.
Figures go to artifacts/faults.jsonl (summarised in RELIABILITY.md).
"""

import time

import pytest

from tests.procs import wait_until

pytestmark = pytest.mark.faults


def test_worker_killed_mid_fold_and_mid_delivery(stack):
    stack.webhook()
    worker = stack.worker()
    stack.listener()
    writer = stack.writer(rate=150)
    time.sleep(2)
    worker.kill()  # kill -9, whatever it is doing
    worker = stack.worker(name="worker-b")
    time.sleep(2)
    stack.receiver.mode = "slow"  # make the next kill land mid-delivery
    time.sleep(1.2)
    worker.kill()
    stack.receiver.mode = "ok"
    stack.worker(name="worker-c")
    time.sleep(1)
    writer.stop()
    stack.assert_consistent()
    stack.figures["worker_kills"] = 2


def test_redis_restart_loses_queued_tasks_but_no_change(stack):
    stack.webhook()
    stack.worker()
    stack.listener()
    writer = stack.writer(rate=150)
    time.sleep(2)
    stack.redis.restart()  # queued tasks and pending keys are gone
    restarted = time.monotonic()
    time.sleep(3)
    writer.stop()
    stack.assert_consistent()
    stack.figures["recovery_s"] = round(time.monotonic() - restarted, 2)


def test_listener_connection_terminated_then_listener_killed(stack):
    stack.worker()
    listener = stack.listener()
    writer = stack.writer(rate=100)
    time.sleep(1.5)
    stack.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'audit_stream listener'"
    )
    size = len(listener.output())
    listener.wait_ready(after=size, timeout=30)  # reconnected
    time.sleep(1)
    listener.kill()
    time.sleep(1)
    stack.listener(name="listener-b")
    time.sleep(1)
    writer.stop()
    stack.assert_consistent()


def test_postgresql_restart_during_load(stack):
    stack.webhook()
    stack.worker()
    stack.listener()
    writer = stack.writer(rate=100)
    time.sleep(2)
    stack.cluster.restart()
    restarted = time.monotonic()
    time.sleep(3)
    writer.stop()
    assert writer.errors > 0  # the writer did see the outage
    stack.assert_consistent()
    stack.figures["recovery_s"] = round(time.monotonic() - restarted, 2)
    stack.figures["writer_errors"] = writer.errors


def test_receiver_down_then_slow_then_flaky(stack):
    receiver = stack.webhook()
    stack.worker(concurrency=2)
    stack.listener()
    writer = stack.writer(rate=50)
    receiver.down()
    time.sleep(2)
    receiver.up()
    receiver.mode = "slow"
    time.sleep(2)
    receiver.mode = "flaky"
    time.sleep(2)
    writer.stop()
    time.sleep(1)
    receiver.mode = "ok"
    stack.assert_consistent()
    stack.figures["attempts"] = stack.count("SELECT count(*) FROM audit_stream_webhookattempt")
    stack.figures["failed_attempts"] = stack.count(
        "SELECT count(*) FROM audit_stream_webhookattempt WHERE NOT succeeded"
    )


def test_burst_of_50000_events_while_the_worker_is_stopped(stack):
    stack.listener()
    with stack.cluster.connect(stack.db) as conn:
        for batch in range(50):
            conn.execute(
                "INSERT INTO testapp_product (name, price, stock, updated_at)"
                " SELECT 'burst-' || %s || '-' || i, 1, 0, now() FROM generate_series(1, 1000) AS i",
                [batch],
            )
            conn.commit()
    time.sleep(1)
    assert stack.count("SELECT count(*) FROM audit_stream_change") == 0
    started = time.monotonic()
    stack.worker()
    stack.assert_consistent(timeout=300)
    stack.figures["burst_events"] = 50_000
    stack.figures["catch_up_s"] = round(time.monotonic() - started, 2)


def test_a_transaction_held_open_for_30_s_skips_nothing(stack):
    stack.worker()
    stack.listener()
    held = stack.cluster.connect(stack.db)
    held.execute("INSERT INTO testapp_product (name, price, stock, updated_at) VALUES ('held', 1, 0, now())")
    writer = stack.writer(rate=50)
    time.sleep(3)
    # Others' changes keep flowing while the held transaction is open.
    wait_until(lambda: stack.count("SELECT count(*) FROM audit_stream_change") > 50, timeout=15)
    time.sleep(27)
    held.commit()
    held.close()
    writer.stop()
    stack.assert_consistent()
    assert stack.count("SELECT count(*) FROM audit_stream_change WHERE snapshot->>'name' = 'held'") == 1
    stack.figures["held_s"] = 30
