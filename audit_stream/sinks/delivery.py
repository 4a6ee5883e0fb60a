"""Publishing sink messages: claimed in batches, published pipelined, retried, dead, replayable.

One call of :func:`deliver` opens one connection to the sink's broker, then
repeatedly claims up to ``batch_size`` due messages (``FOR UPDATE SKIP LOCKED``),
publishes them in one pipelined batch (one round trip for Redis, every publish
in flight at once for JetStream and RabbitMQ) and records the outcomes. A
broker error fails the batch: each message gets its next attempt on
``SINK_RETRY_SCHEDULE`` (±10% jitter), and is ``dead`` after the last.

Two ways to hold a batch, by the sink's ``ordered`` setting:

* **held** (a sink not ordered, the default): the batch's rows stay locked in
  the transaction that claimed them while it is published, and their outcomes
  are written in that same transaction: one row update per message. A worker
  killed mid-batch leaves an aborted transaction: the batch is due again at
  once and published again (at least once, same message ids; JetStream drops
  the duplicates by ``Nats-Msg-Id``). A worker that hangs is cut off by
  ``idle_in_transaction_session_timeout`` (the lease's 60 s), with the same effect.
* **leased** (an ordered sink): a short transaction claims the batch's heads
  with a lease (``status = 'sending'``) and parks the rest
  (:mod:`audit_stream.ordering`); another records the outcomes. A worker
  killed mid-batch leaves leases that expire: the batch is published again.
  (Parking in a transaction held across a publish could deadlock two
  deliveries unparking each other's messages.)

Either way a claim reads from the sink's floor (``due_floor``,
:mod:`audit_stream.ordering`), not through the index entries every published
message leaves behind until a vacuum. A held batch raises the floor in the
transaction that records its outcomes, so a batch rolled back (a worker
killed) never raised it; a batch given back unpublished lowers it to itself.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import DatabaseError, connection, transaction
from django.db.models.functions import Now

from audit_stream import config, ordering
from audit_stream.sinks import base
from audit_stream.sinks.models import Sink, SinkMessage

logger = logging.getLogger("audit_stream.sinks")

__all__ = ["DUE_SINKS_SQL", "SWEEP_DUE_SINKS_SQL", "DeliveryResult", "deliver", "due_sinks", "replay"]

_LEASE_SECONDS = 60

# Active sinks with a due message from their floor, as the claims read: the fold task enqueues
# their deliveries.
DUE_SINKS_SQL = ordering.due_subscribers_sql("audit_stream_sinkmessage", "sink_id", "audit_stream_sink")

# The sweep's (and the listener's, every SWEEP_INTERVAL): the same from no floor, each sink's
# floor lowered to its earliest owed message.
SWEEP_DUE_SINKS_SQL = ordering.lower_floors_sql("audit_stream_sinkmessage", "sink_id", "audit_stream_sink")

# Claim up to `limit` due messages of one sink, in the order they fell due, sending only the heads
# of their objects' queues (audit_stream.ordering; every message of an unordered
# sink is a head); the body is PostgreSQL's own text of the JSONB payload, exactly
# what a webhook receives.
_RETURNING = (
    "m.id, m.attempts, m.event_type, m.payload->'data'->>'model', m.payload->'data'->>'object_id',"
    " (m.payload->'data'->>'event_id')::bigint, m.payload::text"
)
_CLAIMS = ordering.LeasedClaim(
    "audit_stream_sinkmessage", "sink_id", "audit_stream_sink", returning=_RETURNING
)
_LOCK_SQL, _CLAIM_SQL = _CLAIMS.lock_and_lease
# A sink not ordered: the batch stays locked until its outcomes are written (no lease).
_HELD_CLAIM_SQL = ordering.held_claim_sql("audit_stream_sinkmessage", "sink_id", returning=_RETURNING)
_LOWER_FLOOR_SQL = ordering.lower_floor_sql("audit_stream_sink")

# A held batch's transaction ends (rolled back, its batch due again) if its worker
# stops for as long as a lease would last.
_HOLD_TIMEOUT_SQL = f"SET LOCAL idle_in_transaction_session_timeout = '{_LEASE_SECONDS}s'"

_DELIVERED_SQL = """
UPDATE audit_stream_sinkmessage
   SET status = 'delivered', attempts = attempts + 1, delivered_at = clock_timestamp(), lease_until = NULL,
       last_error = ''
 WHERE id = ANY(%(ids)s::uuid[])
"""

# A batch's outcomes added to its sink's lifetime counts (the dashboard's and
# Prometheus's), with the time of its last delivery and its newest error.
_TALLY_SQL = """
UPDATE audit_stream_sink
   SET messages_delivered = messages_delivered + %(delivered)s,
       attempts_failed = attempts_failed + %(failed)s,
       last_delivered_at = CASE WHEN %(delivered)s > 0 THEN clock_timestamp() ELSE last_delivered_at END,
       last_error = CASE WHEN %(failed)s > 0 THEN %(error)s ELSE last_error END,
       last_error_at = CASE WHEN %(failed)s > 0 THEN clock_timestamp() ELSE last_error_at END
 WHERE id = %(sink)s
"""

# A claimed batch given back unpublished (the delivery's budget ran out): due again, no attempt
# counted; from its first due time, which the floor may have passed (lowered to it, _LOWER_FLOOR_SQL).
_RELEASE_SQL = """
UPDATE audit_stream_sinkmessage SET status = 'pending', lease_until = NULL
 WHERE id = ANY(%(ids)s::uuid[]) AND status = 'sending'
RETURNING next_attempt_at
"""

# A failed attempt: the next one after `delay` seconds, or dead when the schedule is spent.
# Times are the clock's, not now(): a held batch's transaction began before it was published.
_FAILED_SQL = """
UPDATE audit_stream_sinkmessage AS m
   SET status = CASE WHEN f.dead THEN 'dead' ELSE 'pending' END,
       attempts = m.attempts + 1, lease_until = NULL, last_error = f.error,
       next_attempt_at = clock_timestamp() + make_interval(secs => f.delay)
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
    """Publish the due messages of one sink in pipelined batches, until none is due or the budget is spent.

    While a full batch is published, the next one is claimed and the previous
    one's outcomes are written, each on a thread of its own with its own
    database connection (:class:`_HeldLanes`; :class:`_LeasedLanes` for an
    ordered sink): the worker's time goes to the broker, PostgreSQL's to the
    other core.
    """
    result = DeliveryResult(sink_id)
    sink = Sink.objects.filter(pk=sink_id, is_active=True).first()
    if sink is None:
        return result
    deadline = time.monotonic() + max_seconds
    backend = base.for_kind(sink.kind, sink.target, sink.options)
    opened = False
    lanes = _lanes(sink)
    upcoming: Future | None = lanes.claim(sink_id, batch_size, ahead=False)
    try:
        while True:
            batch, upcoming = upcoming.result(), None
            if not batch:
                return result
            if result.delivered + result.failed >= max_messages or time.monotonic() > deadline:
                lanes.release(batch)
                result.more = True
                return result
            full = len(batch) == batch_size and lanes.ahead  # more are probably due: claim them meanwhile
            if full:
                upcoming = lanes.claim(sink_id, batch_size, ahead=True)
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
            lanes.record(_outcomes(batch, outcomes, result), ahead=full)
            if all(outcome is not None for outcome in outcomes):
                return result  # the broker is failing: leave the rest to their schedule
            if upcoming is None:
                upcoming = lanes.claim(sink_id, batch_size, ahead=False)
    finally:
        try:
            lanes.close(unpublished=upcoming)
        finally:
            if opened:
                backend.close()


def _lanes(sink: Sink) -> _LeasedLanes | _HeldLanes:
    """How a delivery to ``sink`` holds its batches: leased if it is ordered, else held."""
    return _LeasedLanes(sink.pk) if sink.ordered else _HeldLanes()


def _claim(sink_id: int, limit: int) -> list[tuple[base.Message, int]]:
    """Lease up to ``limit`` due heads (an ordered sink), in a transaction of their own."""
    return _messages(_CLAIMS.take(sink_id, limit, timedelta(seconds=_LEASE_SECONDS)))


@dataclass(frozen=True)
class _Floor:
    """Where a held claim read its sink's floor from, and where its batch raises it."""

    sink_id: int
    read: datetime | None
    raised: datetime
    taken: bool  # the claim locked a batch (whose first due time is ``raised``)

    def rise(self) -> None:
        """In the transaction recording the batch (or ending an empty claim): the floor rises."""
        with connection.cursor() as cursor:
            ordering.raise_floor(cursor, _CLAIMS.raise_floor_sql, self.sink_id, self.read, self.raised)

    def lower(self) -> None:
        """After the batch was rolled back unpublished: the floor comes down to it, if it rose past it.

        If the database can't be reached, the sweep lowers it (the batch is late, not lost).
        """
        if not self.taken:
            return
        try:
            with connection.cursor() as cursor:
                cursor.execute(_LOWER_FLOOR_SQL, {"subscriber": self.sink_id, "floor": self.raised})
        except DatabaseError as exc:
            logger.warning(
                "sink %s: floor not lowered to a batch given back (the sweep will): %s", self.sink_id, exc
            )


def _claim_held(sink_id: int, limit: int) -> tuple[list[tuple[base.Message, int]], _Floor]:
    """Lock up to ``limit`` due messages from the sink's floor, in the transaction open on this
    thread's connection; with the floor its outcomes raise."""
    with connection.cursor() as cursor:
        cursor.execute(_HOLD_TIMEOUT_SQL)
        cursor.execute(_CLAIMS.read_floor_sql, {"subscriber": sink_id})
        _, read, started = cursor.fetchone()
        cursor.execute(_HELD_CLAIM_SQL, {"subscriber": sink_id, "limit": limit, "floor": read})
        rows = cursor.fetchall()
    raised = ordering.raised_floor([row[-1] for row in rows], started)
    return _messages([row[:-1] for row in rows]), _Floor(sink_id, read, raised, taken=bool(rows))


def _messages(rows: list[tuple]) -> list[tuple[base.Message, int]]:
    """Claimed rows as messages to publish, with the attempts made so far."""
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


@dataclass
class _Outcomes:
    """A batch's outcomes, as the arrays its UPDATE statements bind."""

    sink_id: int
    delivered: list[str] = field(default_factory=list)
    failed_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    dead: list[bool] = field(default_factory=list)


def _outcomes(
    batch: list[tuple[base.Message, int]], outcomes: list[str | None], result: DeliveryResult
) -> _Outcomes:
    """Sort a batch's outcomes into delivered and failed (with the next attempt's delay), counting them."""
    schedule = config.sink_retry_schedule()
    out = _Outcomes(result.sink_id)
    for (message, attempts), error in zip(batch, outcomes, strict=True):
        uid = message.id.removeprefix("msg_")
        if error is None:
            out.delivered.append(uid)
            continue
        tried = attempts + 1
        dead = tried >= len(schedule)
        out.failed_ids.append(uid)
        out.errors.append(error[:2000])
        out.delays.append(0.0 if dead else schedule[tried] * random.uniform(0.9, 1.1))
        out.dead.append(dead)
        result.failed += 1
        result.dead += dead
        if error not in result.errors:
            result.errors.append(error)
    result.delivered += len(out.delivered)
    return out


def _write(out: _Outcomes) -> None:
    """Record a batch's outcomes in a transaction (a leased batch)."""
    with transaction.atomic():
        _write_outcomes(out)


def _write_outcomes(out: _Outcomes) -> None:
    """Record a batch's outcomes: three statements at most, whatever the batch's size."""
    with connection.cursor() as cursor:
        cursor.execute(
            _TALLY_SQL,
            {
                "sink": out.sink_id,
                "delivered": len(out.delivered),
                "failed": len(out.failed_ids),
                "error": out.errors[-1] if out.errors else "",
            },
        )
        if out.delivered:
            cursor.execute(_DELIVERED_SQL, {"ids": out.delivered})
        if out.failed_ids:
            cursor.execute(
                _FAILED_SQL,
                {"ids": out.failed_ids, "errors": out.errors, "delays": out.delays, "dead": out.dead},
            )


class _Lanes:
    """What both ways of holding batches share: one outcome write in flight at most."""

    _written: Future | None = None

    def wait(self) -> None:
        """Until the write in flight (if any) is committed; raises its error."""
        if self._written is not None:
            written, self._written = self._written, None
            written.result()


class _LeasedLanes(_Lanes):
    """The database work of an ordered sink's delivery: claims on one thread, outcome writes on another.

    Each thread has its own connection. At most one claim and one write are in
    flight, and a write waits for the previous one, so a failed write surfaces
    (and stops the delivery) one batch later at most; its messages stay
    ``sending`` and are published again when their lease expires. Work not done
    ahead (a delivery of one small batch: no thread, no extra connection) and
    everything inside an atomic block (whose uncommitted rows another
    connection could not see) runs inline.
    """

    def __init__(self, sink_id: int) -> None:
        self._sink_id = sink_id
        self._inline = connection.in_atomic_block
        self.ahead = True  # claims ahead may run beside a publish (inline, they wait for it)
        self._claimer: ThreadPoolExecutor | None = None
        self._recorder: ThreadPoolExecutor | None = None

    def _submit(self, lane: str, ahead: bool, call, *args) -> Future:
        if self._inline or not ahead:
            future: Future = Future()
            future.set_result(call(*args))
            return future
        if getattr(self, lane) is None:
            setattr(
                self, lane, ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"audit_stream-sink{lane}")
            )
        return getattr(self, lane).submit(call, *args)

    def claim(self, sink_id: int, limit: int, *, ahead: bool) -> Future:
        """The next batch (a future of :func:`_claim`'s list); on the claim thread when ``ahead``."""
        return self._submit("_claimer", ahead, _claim, sink_id, limit)

    def record(self, out: _Outcomes, *, ahead: bool) -> None:
        """Write a batch's outcomes; on the write thread when ``ahead`` (more batches to come)."""
        self.wait()
        self._written = self._submit("_recorder", ahead, _write, out)

    def release(self, batch: list[tuple[base.Message, int]]) -> None:
        """Give a claimed batch back unpublished: due again now, no attempt counted."""
        if batch:
            ids = [message.id.removeprefix("msg_") for message, _ in batch]
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(_RELEASE_SQL, {"ids": ids})
                due = [row[0] for row in cursor.fetchall()]
                if due:
                    cursor.execute(_LOWER_FLOOR_SQL, {"subscriber": self._sink_id, "floor": min(due)})

    def close(self, unpublished: Future | None = None) -> None:
        """Wait for the write in flight, give back the batch claimed but not published, end the threads."""
        try:
            self.wait()
            if unpublished is not None and unpublished.exception() is None:
                self.release(unpublished.result())
        finally:
            for executor in (self._claimer, self._recorder):
                if executor is not None:
                    executor.submit(_close_connection).result()
                    executor.shutdown()
            self._claimer = self._recorder = None


class _GiveBack(Exception):
    """Ends a held batch's transaction with a rollback: the batch is due again, no attempt counted."""


class _Lane:
    """One connection holding one batch at a time: claimed, then (once published) recorded, one transaction.

    Its calls run on one thread of their own (``threaded``), or on the
    caller's (its connection, and its atomic block if it is in one).
    """

    def __init__(self, threaded: bool) -> None:
        self._executor = None
        if threaded:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit_stream-sinklane")
        self._atomic = None
        self._floor: _Floor | None = None  # of the batch held

    def _submit(self, call, *args) -> Future:
        if self._executor is not None:
            return self._executor.submit(call, *args)
        future: Future = Future()
        try:
            future.set_result(call(*args))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def claim(self, sink_id: int, limit: int) -> Future:
        """A future of the batch: its rows locked in a transaction left open (closed at once if empty)."""
        return self._submit(self._claim, sink_id, limit)

    def finish(self, out: _Outcomes | None) -> Future:
        """Write the outcomes and commit; with ``None``, roll back (the batch is due again, untried)."""
        return self._submit(self._finish, out)

    def _claim(self, sink_id: int, limit: int) -> list[tuple[base.Message, int]]:
        self._atomic = transaction.atomic()
        self._atomic.__enter__()
        try:
            batch, self._floor = _claim_held(sink_id, limit)
            if not batch:
                self._floor.rise()
        except BaseException as exc:
            self._end(exc)
            raise
        if not batch:
            self._end(None)
        return batch

    def _finish(self, out: _Outcomes | None) -> None:
        if self._atomic is None:
            return
        if out is None:
            self._end(_GiveBack())
            self._floor.lower()
            return
        try:
            _write_outcomes(out)
            self._floor.rise()
        except BaseException as exc:
            self._end(exc)
            raise
        self._end(None)

    def _end(self, exc: BaseException | None) -> None:
        atomic, self._atomic = self._atomic, None
        if exc is None:
            atomic.__exit__(None, None, None)
        else:
            atomic.__exit__(type(exc), exc, exc.__traceback__)

    def close(self) -> None:
        """Roll back a batch still held, and end the thread and its connection."""
        self._submit(self._finish, None).result()
        if self._executor is not None:
            self._executor.submit(_close_connection).result()
            self._executor.shutdown()


class _HeldLanes(_Lanes):
    """The database work of a delivery to a sink not ordered: each batch held in a transaction of its own.

    The first batch is claimed on the caller's connection; batches claimed
    ahead (while another is published) alternate between two threads with a
    connection each, so at most two batches are held at once. Batches are
    recorded or given back in the order they were claimed. A failed write
    surfaces (and stops the delivery) one batch later at most; its batch was
    rolled back, and is published again.
    """

    def __init__(self) -> None:
        self._caller = _Lane(threaded=False)
        # Inside an atomic block, another connection could not see its uncommitted rows: one lane.
        self.ahead = not connection.in_atomic_block
        self._threads: list[_Lane] = []
        self._turn = 0
        self._held: deque[_Lane] = deque()  # lanes holding a claimed batch, oldest first

    def claim(self, sink_id: int, limit: int, *, ahead: bool) -> Future:
        """The next batch (a future of its messages), held by a lane until recorded or given back."""
        if ahead and self.ahead:
            if len(self._threads) < 2:
                self._threads.append(_Lane(threaded=True))
            lane = self._threads[self._turn % 2]
            self._turn += 1
        else:
            lane = self._caller
        future = lane.claim(sink_id, limit)
        self._held.append(lane)
        return future

    def record(self, out: _Outcomes, *, ahead: bool) -> None:
        """Write the oldest held batch's outcomes and commit it; in the background when ``ahead``."""
        self.wait()
        self._written = self._held.popleft().finish(out)
        if not ahead:
            self.wait()

    def release(self, batch: list[tuple[base.Message, int]]) -> None:
        """Give the oldest held batch back unpublished: rolled back, due again now, no attempt counted."""
        self._held.popleft().finish(None).result()

    def close(self, unpublished: Future | None = None) -> None:
        """Wait for the write in flight, roll back every batch still held, end the threads."""
        try:
            self.wait()
        finally:
            if unpublished is not None:
                unpublished.exception()  # its claim has run: its lane holds it (or nothing)
            for lane in (*self._threads, self._caller):
                lane.close()
            self._held.clear()


def _close_connection() -> None:
    """Close the calling thread's connection (``connection.close`` would bind the caller's own)."""
    connection.close()


def replay(sink_id: int) -> int:
    """Make every dead message of ``sink_id`` due again, with a fresh schedule. Returns how many."""
    return SinkMessage.objects.filter(sink_id=sink_id, status=SinkMessage.DEAD).update(
        status=SinkMessage.PENDING, attempts=0, next_attempt_at=Now(), last_error="", held=False
    )


def has_due(sink_id: int) -> bool:
    """Whether the sink is active and has a message due now (or whose lease expired), from its floor."""
    return sink_id in due_sinks()


def due_sinks(*, lower_floors: bool = False) -> list[int]:
    """Active sinks with a message whose attempt is due (or whose lease expired), from their floors.

    ``lower_floors`` (the sweep's): from no floor, each sink's floor lowered to its earliest owed
    message, so that the claims find a message that became owed below it (:mod:`audit_stream.ordering`).
    """
    with connection.cursor() as cursor:
        cursor.execute(SWEEP_DUE_SINKS_SQL if lower_floors else DUE_SINKS_SQL)
        return sorted(row[0] for row in cursor.fetchall())
