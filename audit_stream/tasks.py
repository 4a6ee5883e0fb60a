"""Celery tasks (autodiscovered by ``worker.celery``).

Each unit of work (folding one event table, delivering to one endpoint) has
at most one pending task at a time (:mod:`audit_stream.stream.pending`).
"""

from __future__ import annotations

import logging

import redis
from celery import shared_task
from celery.signals import beat_embedded_init, beat_init, before_task_publish
from django.db import connection
from django.utils import timezone
from kombu.exceptions import OperationalError

from audit_stream import partitions, retention
from audit_stream.models import FoldRun, RetentionRun
from audit_stream.sinks import delivery as sink_delivery
from audit_stream.stream import fold as _fold
from audit_stream.stream import heartbeat, pending, wakeup
from audit_stream.webhooks import delivery as webhook_delivery

logger = logging.getLogger("audit_stream.stream")

FOLD = "audit_stream.fold"
DELIVER = "audit_stream.deliver"
DELIVER_SINK = "audit_stream.deliver_sink"

# Redis (the pending marks) or the broker (Celery raises kombu's OperationalError) unreachable.
_BROKER_ERRORS = (redis.RedisError, OperationalError)


def enqueue(task, *args) -> bool:
    """Send ``task`` with ``args`` (its unit of work) unless one is already pending."""
    key = pending.key(*args)
    if not pending.claim(task.name, key):
        return False
    try:
        task.delay(*args)
    except Exception:
        pending.release(task.name, key)
        raise
    return True


def _follow_up(task, *args) -> bool:
    """Enqueue ``task`` from a running task (its next run, a delivery of what it recorded).

    When Redis or the broker is down or restarting, the running task goes on
    rather than fail with work half done: what it would have enqueued is still
    owed in the database, and the listener's next poll (or the sweep) enqueues
    it once the broker is back.
    """
    try:
        return enqueue(task, *args)
    except _BROKER_ERRORS as exc:
        logger.warning(
            "could not enqueue %s(%s); the listener or the sweep will: %s", task.name, pending.key(*args), exc
        )
        return False


def _release(task_name: str, key: object) -> None:
    """Release a fold's pending mark as it starts.

    With Redis unreachable the task goes on: the mark expires by itself
    (:mod:`audit_stream.stream.pending`).
    """
    try:
        pending.release(task_name, key)
    except redis.RedisError as exc:
        logger.warning("could not release the pending mark of %s(%s): %s", task_name, key, exc)


def _fold_args(event_table: str, lane: int | None) -> list:
    """A fold task's arguments: the table, and the lane when the table is folded in several."""
    return [event_table] if lane is None else [event_table, lane]


@shared_task(name=FOLD, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def fold(event_table: str, lane: int | None = None) -> dict:
    """Fold the committed events of one event table (or of one of its lanes) into the change feed.

    A table folded in several lanes (``FOLD_LANES``) gets one task per lane,
    so as many workers fold it at once. Acknowledged only when done: a worker
    killed mid-fold leaves the task to be delivered again, and the fold's
    transactions make the redo exact.
    """
    _release(FOLD, pending.key(*_fold_args(event_table, lane)))
    started = timezone.now()

    def deliver_now(endpoints):  # after each committed batch, not when the fold ends
        for endpoint_id in sorted(endpoints):
            _follow_up(deliver, endpoint_id)

    result = _fold.fold(event_table, lane=lane, on_messages=deliver_now)
    _record_fold(event_table, started, result)
    if result.folded:
        _enqueue_due_sinks(send=_follow_up)
    if not result.caught_up:
        _follow_up(fold, *_fold_args(event_table, lane))  # more to do: yield the worker, come back
    logger.info("folded %s events of %s (lane %s)", result.folded, event_table, "*" if lane is None else lane)
    return {"event_table": event_table, "lane": lane, "folded": result.folded, "caught_up": result.caught_up}


def _record_fold(event_table: str, started, result) -> None:
    heartbeat.beat("worker")
    if result.folded:
        FoldRun.objects.create(
            event_table=event_table, started_at=started, folded=result.folded, lag_ms=result.lag_ms
        )


@shared_task(name=DELIVER, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def deliver(endpoint_id: int) -> dict:
    """Deliver the due messages of one webhook endpoint (one task queued or running per endpoint)."""
    heartbeat.beat("worker")
    result = _delivery(deliver, endpoint_id, webhook_delivery.deliver, webhook_delivery.has_due)
    logger.info("endpoint %s: %s delivered, %s failed", endpoint_id, result.delivered, result.failed)
    return {"endpoint": endpoint_id, "delivered": result.delivered, "failed": result.failed}


@shared_task(name=DELIVER_SINK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def deliver_sink(sink_id: int) -> dict:
    """Publish the due messages of one sink, in pipelined batches (one task queued or running per sink)."""
    heartbeat.beat("worker")
    result = _delivery(deliver_sink, sink_id, sink_delivery.deliver, sink_delivery.has_due)
    logger.info("sink %s: %s delivered, %s failed", sink_id, result.delivered, result.failed)
    return {"sink": sink_id, "delivered": result.delivered, "failed": result.failed}


def _delivery(task, key: int, run, has_due):
    """``run(key)`` with the task's pending mark held until it ends, then the next run enqueued if
    anything is due.

    A fold keeps its mark only while queued; a delivery keeps it while it runs too, so that work
    arriving meanwhile sends no second task for the same endpoint (or sink): one task already sends
    in parallel and pipelines its batches, and a second would only take a worker process from the
    fold (with a slow receiver, every process of a worker could end up waiting on one endpoint
    while the change feed waits behind them). Whatever became due after the run's last claim is
    found here, once the mark is released. The mark is renewed while the run lasts and expires
    seconds after a killed worker's; if Redis loses it, a second task may run alongside, which the
    claims make safe (:mod:`audit_stream.stream.pending`).
    """
    with pending.held(task.name, key):
        result = run(key)
    if result.more or has_due(key):
        _follow_up(task, key)
    return result


def _enqueue_due_sinks(*, lower_floors: bool = False, send=enqueue) -> list[int]:
    """Enqueue a delivery of each sink with a due message (``lower_floors``: the sweep's, from no floor)."""
    sinks = sink_delivery.due_sinks(lower_floors=lower_floors)
    for sink_id in sinks:
        send(deliver_sink, sink_id)
    return sinks


def endpoints_with_due_messages() -> list[int]:
    """Active endpoints with a message whose attempt is due (or whose lease expired), from no floor.

    The sweep's check: it also lowers each endpoint's floor to its earliest owed message, so that
    the claims find a message that became owed below it (:mod:`audit_stream.ordering`).
    """
    with connection.cursor() as cursor:
        cursor.execute(webhook_delivery.SWEEP_DUE_ENDPOINTS_SQL)
        return sorted(row[0] for row in cursor.fetchall())


SWEEP = "audit_stream.sweep"
PRUNE = "audit_stream.prune"


_in_beat = False  # set in Celery beat's process (standalone, or embedded with worker -B)


@beat_init.connect
@beat_embedded_init.connect
def _beat_started(sender=None, **kwargs) -> None:
    global _in_beat
    _in_beat = True


@before_task_publish.connect
def _name_beat(sender=None, headers=None, **kwargs) -> None:
    """When beat sends the sweep or retention, name beat in the task's headers.

    The worker that runs the task records beat's heartbeat under that name, so
    the dashboard shows beat as one process, whichever worker ran its tasks. A
    sweep sent by anything else (``sweep.delay()`` by hand) names nobody.
    """
    if _in_beat and sender in (SWEEP, PRUNE) and headers is not None:
        headers.setdefault(heartbeat.BEAT_HEADER, heartbeat.beat_identity())


@shared_task(name=SWEEP, bind=True, ignore_result=True)
def sweep(self) -> dict:
    """Enqueue what is due: folds of tables with unfolded events, deliveries of due messages.

    Run by beat as a safety net; the listener does the same every POLL_INTERVAL.
    Also records beat's heartbeat and forgets processes silent for an hour.
    """
    heartbeat.beat_for_scheduler(getattr(self.request, heartbeat.BEAT_HEADER, None))
    heartbeat.forget()
    work = wakeup.lanes_with_work()
    for table, lane in work:
        enqueue(fold, *_fold_args(table, lane))
    tables = sorted({table for table, _ in work})
    endpoints = endpoints_with_due_messages()
    for endpoint_id in endpoints:
        enqueue(deliver, endpoint_id)
    sinks = _enqueue_due_sinks(lower_floors=True)
    return {"tables": tables, "endpoints": endpoints, "sinks": sinks}


@shared_task(name=PRUNE, bind=True, ignore_result=True)
def prune(self) -> dict:
    """Apply the retention policies (scheduled by beat every RETENTION_INTERVAL) and record the run."""
    heartbeat.beat_for_scheduler(getattr(self.request, heartbeat.BEAT_HEADER, None))
    run = RetentionRun.objects.create(trigger="beat")
    try:
        report = retention.prune()
        run.rows, run.errors = report.rows, report.errors
    except Exception as exc:
        run.errors = [f"{type(exc).__name__}: {exc}"]
        raise
    finally:
        run.finished_at = timezone.now()
        run.save(update_fields=["rows", "errors", "finished_at"])
    return run.rows


@shared_task(name="audit_stream.ensure_partitions", ignore_result=True)
def ensure_partitions() -> dict:
    """Create the partitions of partitioned history tables ahead of the id sequence (scheduled by beat)."""
    return partitions.ensure_all()
