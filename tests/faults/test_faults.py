"""Fault tests: the guarantees hold while processes die, servers restart and receivers misbehave.

Each test runs a steady writer (or a burst), the real listener and Celery
worker, and (where deliveries matter) a webhook receiver, injects its fault,
then counts with ``stack.assert_consistent()``: every event folded exactly
once, every message delivered at least once and none dead, no webhook-id
reused. Each fault lands when a condition says the system is where the
scenario wants it (so many changes folded, a delivery in flight...), never
after a guessed sleep. Figures go to artifacts/faults.jsonl (summarised in
RELIABILITY.md).

The tests about the fold (a worker killed mid-fold, a burst with two worker
processes, a transaction that commits late) also run with the products'
event table folded in 4 lanes (``FOLD_LANES``): one fold task per lane, and
two worker processes folding two lanes of the table at once.
"""

import time

import pytest
import redis

from tests.procs import wait_until

pytestmark = pytest.mark.faults

# One lane (the default), and 4 lanes of the products' event table.
LANES = pytest.mark.parametrize("lanes", [1, 4], ids=["1-lane", "4-lanes"])


@LANES
def test_worker_killed_mid_fold_and_mid_delivery(stack):
    stack.webhook()
    worker = stack.worker()
    stack.listener()
    writer = stack.writer(rate=150)
    stack.wait_for(stack.changes, 150, message="the first worker folding")
    worker.kill()  # kill -9, whatever it is doing
    worker = stack.worker(name="worker-b")
    stack.wait_for(stack.changes, 150, message="the second worker folding")
    stack.receiver.mode = "slow"  # make the next kill land mid-delivery
    wait_until(lambda: stack.receiver.in_flight > 0, timeout=30, message="a delivery in flight")
    worker.kill()
    stack.receiver.mode = "ok"
    stack.worker(name="worker-c")
    stack.wait_for(stack.changes, 100, message="the third worker folding")
    writer.stop()
    stack.assert_consistent()
    stack.figures["worker_kills"] = 2


@LANES
def test_redis_restart_loses_queued_tasks_but_no_change(stack):
    stack.webhook()
    stack.worker()
    stack.listener()
    writer = stack.writer(rate=150)
    stack.wait_for(stack.changes, 150, message="folding under way")
    stack.redis.restart()  # queued tasks and pending keys are gone
    restarted = time.monotonic()
    # The time to recover is a figure (RELIABILITY.md), not a bound: a slow machine may take long.
    stack.wait_for(stack.changes, 300, timeout=120, message="folding again after the restart")
    writer.stop()
    stack.assert_consistent()
    stack.figures["recovery_s"] = round(time.monotonic() - restarted, 2)


def test_listener_connection_terminated_then_listener_killed(stack):
    stack.worker()
    listener = stack.listener()
    writer = stack.writer(rate=100)
    stack.wait_for(stack.changes, 100, message="folding under way")
    stack.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'audit_stream listener'"
    )
    size = len(listener.output())
    listener.wait_ready(after=size, timeout=30)  # reconnected
    stack.wait_for(stack.changes, 50, message="folding after the reconnection")
    listener.kill()
    stack.wait_for(stack.events, 50, message="events written with no listener")
    stack.listener(name="listener-b")
    stack.wait_for(stack.changes, 100, message="folding after the new listener started")
    writer.stop()
    stack.assert_consistent()


def test_postgresql_restart_during_load(stack):
    stack.webhook()
    stack.worker()
    stack.listener()
    writer = stack.writer(rate=100)
    stack.wait_for(stack.changes, 100, message="folding under way")
    stack.cluster.restart()
    restarted = time.monotonic()
    stack.wait_for(lambda: writer.committed, 150, message="the writer committing again")
    writer.stop()
    assert writer.errors > 0  # the writer did see the outage
    stack.assert_consistent()
    stack.figures["recovery_s"] = round(time.monotonic() - restarted, 2)
    stack.figures["writer_errors"] = writer.errors


def test_receiver_down_then_slow_then_flaky(stack):
    """A short outage (down, slow, flaky) delays deliveries; it loses none and never disables the endpoint."""
    receiver = stack.webhook()
    stack.worker(concurrency=2)
    stack.listener()
    writer = stack.writer(rate=50)
    receiver.down()
    failed = "SELECT count(*) FROM audit_stream_webhookattempt WHERE error LIKE %s"
    stack.wait_for(lambda: stack.count(failed, ["ConnectError%"]), 20, message="refused connections")
    receiver.up()
    receiver.mode = "slow"
    stack.wait_for(lambda: stack.count(failed, ["timeout%"]), 5, message="timed-out attempts")
    receiver.mode = "flaky"
    stack.wait_for(lambda: stack.count(failed, ["HTTP 500"]), 5, message="HTTP 500 answers")
    writer.stop()
    receiver.mode = "ok"
    stack.assert_consistent()
    active, reason = stack.sql(
        "SELECT is_active, disabled_reason FROM audit_stream_webhookendpoint WHERE id = %s",
        [stack.endpoint_id],
    )[0]
    assert (active, reason) == (True, "")
    stack.figures["attempts"] = stack.count("SELECT count(*) FROM audit_stream_webhookattempt")
    stack.figures["failed_attempts"] = stack.count(
        "SELECT count(*) FROM audit_stream_webhookattempt WHERE NOT succeeded"
    )


@LANES
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
    broker = redis.Redis.from_url(stack.redis.url)
    wait_until(lambda: broker.llen("celery") > 0, timeout=30, message="the listener to queue a fold")
    assert stack.changes() == 0  # queued, and nobody to fold it
    started = time.monotonic()
    stack.worker()
    stack.assert_consistent(timeout=300)
    stack.figures["burst_events"] = 50_000
    stack.figures["catch_up_s"] = round(time.monotonic() - started, 2)


@LANES
def test_a_transaction_held_open_across_fold_tasks_skips_nothing(stack, lanes):
    """A transaction left open while fold task after fold task folds others' changes delays only its
    own event: unfolded while open, folded once after its commit.

    Nothing in the fold depends on how long a transaction has been open (snapshot
    intervals, not a time or xmin threshold): what matters is that folds keep
    starting new intervals while it is open. So the hold lasts three phases:
    a writer commits 50 rows, stops, and every lane's fold task goes idle and
    ends (a ``FoldRun`` row); the next phase's tasks start from the checkpoint
    whose snapshot still sees the held transaction in progress.
    """
    stack.worker()
    stack.listener()
    held = stack.cluster.connect(stack.db)
    held.execute("INSERT INTO testapp_product (name, price, stock, updated_at) VALUES ('held', 1, 0, now())")
    (held_since,) = held.execute("SELECT now()").fetchone()  # the held transaction's start
    runs = (
        "SELECT count(*) FROM audit_stream_foldrun"
        " WHERE event_table = 'testapp_productevent' AND started_at >= %s"
    )
    held_change = "SELECT count(*) FROM audit_stream_change WHERE snapshot->>'name' = 'held'"
    for phase in range(3):
        ended = stack.count(runs, [held_since])
        writer = stack.writer(rate=50)
        stack.wait_for(stack.changes, 50, message=f"others' changes folded (phase {phase + 1})")
        writer.stop()
        wait_until(
            lambda n=ended: stack.count(runs, [held_since]) >= n + lanes,
            timeout=60,
            message=f"the fold task of each of {lanes} lanes to end (phase {phase + 1})",
        )
    assert stack.changes() >= 3 * 50  # others flowed: it held nothing of theirs back
    assert stack.count(held_change) == 0  # its own event waits for its commit
    held_s = stack.count("SELECT extract(epoch FROM now() - %s)", [held_since])
    stack.figures["held_s"] = round(float(held_s), 1)
    stack.figures["fold_tasks_while_held"] = stack.count(runs, [held_since])
    held.commit()
    held.close()
    stack.assert_consistent()
    assert stack.count(held_change) == 1
