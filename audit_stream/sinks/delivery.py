"""Publishing sink messages: claimed in batches, published pipelined, retried, dead, replayable.

One call of :func:`deliver` opens one connection to the sink's broker, then
repeatedly claims up to ``batch_size`` due messages (``FOR UPDATE SKIP LOCKED``,
with a lease, in a short transaction), publishes them in one pipelined batch
(one round trip for Redis, every publish in flight at once for JetStream and
RabbitMQ) and records the outcomes in one transaction. A broker error fails
the batch: each message gets its next attempt on ``SINK_RETRY_SCHEDULE``
(±10% jitter), and is ``dead`` after the last. A worker killed mid-batch leaves
leases that expire: the batch is published again (at least once, same message
ids; JetStream drops the duplicates by ``Nats-Msg-Id``).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import connection, transaction
from django.db.models.functions import Now

from audit_stream import config, ordering
from audit_stream.sinks import base
from audit_stream.sinks.models import Sink, SinkMessage

__all__ = ["DUE_SINKS_SQL", "DeliveryResult", "deliver", "due_sinks", "replay"]

_LEASE_SECONDS = 60

# Due: pending and its time has come, or claimed and its lease expired (its worker
# died); never while parked behind its object's head (ordered sinks).
_DUE = ordering.DUE

# Active sinks with a due message: the sweep and the fold task enqueue their deliveries.
# One probe of the claim's index per sink, however many messages are due.
DUE_SINKS_SQL = f"""
SELECT s.id
FROM audit_stream_sink AS s
WHERE s.is_active
  AND EXISTS (SELECT 1 FROM audit_stream_sinkmessage AS m WHERE m.sink_id = s.id AND {_DUE})
"""

# Claim up to `limit` due messages of one sink, in the order they fell due, sending only the heads
# of their objects' queues (audit_stream.ordering; every message of an unordered
# sink is a head); the body is PostgreSQL's own text of the JSONB payload, exactly
# what a webhook receives.
_LOCK_SQL, _CLAIM_SQL = ordering.claim_sql(
    "audit_stream_sinkmessage",
    "sink_id",
    returning="m.id, m.attempts, m.event_type, m.payload->'data'->>'model', m.payload->'data'->>'object_id',"
    " (m.payload->'data'->>'event_id')::bigint, m.payload::text",
)

_DELIVERED_SQL = """
UPDATE audit_stream_sinkmessage
   SET status = 'delivered', attempts = attempts + 1, delivered_at = now(), lease_until = NULL,
       last_error = ''
 WHERE id = ANY(%(ids)s::uuid[])
"""

# A failed attempt: the next one after `delay` seconds, or dead when the schedule is spent.
_FAILED_SQL = """
UPDATE audit_stream_sinkmessage AS m
   SET status = CASE WHEN f.dead THEN 'dead' ELSE 'pending' END,
       attempts = m.attempts + 1, lease_until = NULL, last_error = f.error,
       next_attempt_at = now() + make_interval(secs => f.delay)
  FROM unnest(%(ids)s::uuid[], %(errors)s::text[], %(delays)s::float8[], %(dead)s::bool[])
       AS f(id, error, delay, dead)
 WHERE m.id = f.id
"""


@dataclass
class DeliveryResult:
    """What one call of :func:`deliver` did."""

    sink_id: int
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    more: bool = False  # stopped by its budget with messages still due
    errors: list[str] = field(default_factory=list)


def deliver(
    sink_id: int, *, batch_size: int = 2000, max_messages: int = 50_000, max_seconds: float = 20.0
) -> DeliveryResult:
    """Publish the due messages of one sink in pipelined batches, until none is due or the budget is spent."""
    result = DeliveryResult(sink_id)
    sink = Sink.objects.filter(pk=sink_id, is_active=True).first()
    if sink is None:
        return result
    deadline = time.monotonic() + max_seconds
    backend = base.for_kind(sink.kind, sink.target, sink.options)
    opened = False
    try:
        while True:
            if result.delivered + result.failed >= max_messages or time.monotonic() > deadline:
                result.more = _has_due(sink_id)
                return result
            batch = _claim(sink_id, batch_size)
            if not batch:
                return result
            try:
                if not opened:
                    backend.open()
                    opened = True
                outcomes = backend.publish_batch([message for message, _ in batch])
            except Exception as exc:  # the broker (or the sink's settings): the whole batch failed
                error = str(exc) if isinstance(exc, base.BrokerError) else f"{type(exc).__name__}: {exc}"
                outcomes = [error] * len(batch)
                opened = False  # reconnect for the next batch
                backend.close()
            _record(batch, outcomes, result)
            if all(outcome is not None for outcome in outcomes):
                return result  # the broker is failing: leave the rest to their schedule
    finally:
        if opened:
            backend.close()


def _claim(sink_id: int, limit: int) -> list[tuple[base.Message, int]]:
    rows = []
    while not rows:  # a claim that found only messages to park claims again
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_LOCK_SQL, {"subscriber": sink_id, "limit": limit})
            ids = [row[0] for row in cursor.fetchall()]
            if not ids:
                return []
            cursor.execute(_CLAIM_SQL, {"ids": ids, "lease": timedelta(seconds=_LEASE_SECONDS)})
            rows = cursor.fetchall()
    rows.sort(key=lambda row: row[5])  # oldest event first within the batch
    return [
        (
            base.Message(
                id=f"msg_{mid.hex}",
                event_id=event_id,
                event_type=event_type,
                model=model,
                object_id=object_id,
                body=body.encode(),
            ),
            attempts,
        )
        for mid, attempts, event_type, model, object_id, event_id, body in rows
    ]


def _record(
    batch: list[tuple[base.Message, int]], outcomes: list[str | None], result: DeliveryResult
) -> None:
    schedule = config.sink_retry_schedule()
    delivered, failed = [], ([], [], [], [])
    for (message, attempts), error in zip(batch, outcomes, strict=True):
        uid = message.id.removeprefix("msg_")
        if error is None:
            delivered.append(uid)
            continue
        tried = attempts + 1
        dead = tried >= len(schedule)
        delay = 0.0 if dead else schedule[tried] * random.uniform(0.9, 1.1)
        for column, value in zip(failed, (uid, error[:2000], delay, dead), strict=True):
            column.append(value)
        result.failed += 1
        result.dead += dead
        if error not in result.errors:
            result.errors.append(error)
    result.delivered += len(delivered)
    with transaction.atomic(), connection.cursor() as cursor:
        if delivered:
            cursor.execute(_DELIVERED_SQL, {"ids": delivered})
        if failed[0]:
            ids, errors, delays, dead = failed
            cursor.execute(_FAILED_SQL, {"ids": ids, "errors": errors, "delays": delays, "dead": dead})


def _has_due(sink_id: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT EXISTS (SELECT 1 FROM audit_stream_sinkmessage AS m WHERE m.sink_id = %s AND {_DUE})",
            [sink_id],
        )
        return cursor.fetchone()[0]


def replay(sink_id: int) -> int:
    """Make every dead message of ``sink_id`` due again, with a fresh schedule. Returns how many."""
    return SinkMessage.objects.filter(sink_id=sink_id, status=SinkMessage.DEAD).update(
        status=SinkMessage.PENDING, attempts=0, next_attempt_at=Now(), last_error="", held=False
    )


def due_sinks() -> list[int]:
    """Active sinks with a message whose attempt is due (or whose lease expired)."""
    with connection.cursor() as cursor:
        cursor.execute(DUE_SINKS_SQL)
        return sorted(row[0] for row in cursor.fetchall())
