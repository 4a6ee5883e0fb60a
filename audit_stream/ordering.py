"""What a subscriber may send now: due messages, and for ordered subscribers only each object's head.

Shared by webhook endpoints (``audit_stream_webhookmessage``, keyed by
``endpoint_id``) and sinks (``audit_stream_sinkmessage``, ``sink_id``): both
claim queries are built here, so "due" and "head of its object's queue" are
each written once.

Ordered delivery per object. A subscriber declared ``ordered`` gets messages
with an ``object_key`` (``"<app_label.model>:<pk>"``, set by the fold). Such a
message is sent only when it is the **head** of its object's queue: no message
of the same subscriber and object with a smaller ``change_id`` is still owed
(``pending`` or ``sending``). A message that was delivered or went dead no
longer holds the next one back, so a failing object waits for its retry
schedule while every other object keeps flowing.

Staying O(batch) at any backlog. A claim reads the subscriber's due messages
in the order they fell due, a range of an index on the due time (so messages
waiting for a later retry are not read) that leaves out the messages
**parked** (``held``) behind their object's head. The first claim that meets
a message that is not a head parks it, so a failing object's queue is walked
once, not by every claim. When a message stops being owed, a trigger
(:class:`UnparkNext`) unparks the next owed message of its object, which the
next claim sends if it is now the head. ``held`` only keeps a message out of
the scan: the head condition is checked by every claim, so nothing is sent out
of order whatever ``held`` says.

Staying O(batch) however many messages were delivered. Every delivered
message leaves entries of its owed versions in the ``..._claimable`` index
until a vacuum removes them (or a scan finds them dead to every transaction:
a long transaction anywhere delays that), and they sort with the oldest due
times, where a claim's scan starts: in an hour at 300 messages/s one claim
walked 19,000-41,000 buffers of them for 0-15 messages (BENCHMARKS.md,
"Soak"). So every subscriber (webhook endpoint, sink) has a **floor**
(``due_floor``) and is claimed from its floor less :data:`FLOOR_MARGIN`: each
claim raises the floor to the due time of the first message it took (or to
its start when it took none), only if no one changed it meanwhile
(:func:`raise_floor_sql`), since no owed message due before it is left but
those other claims hold. A message that becomes owed with an earlier due time
(a transaction that commits more than the margin after it started, a retry
on a clock that is behind, a claim that rolled back after another raised the
floor past it) is found by the sweep, which lowers the floor to the earliest
due time (:func:`lower_floors_sql`), every ``SWEEP_INTERVAL``. A message
unparked is due from then (:class:`UnparkNext`), not from its first due time;
a batch given back unsent lowers the floor to itself (:func:`lower_floor_sql`).

A **leased** claim (:class:`LeasedClaim`: webhook endpoints, ordered sinks)
raises the floor after its transaction; a **held** claim
(:func:`held_claim_sql`: sinks not ordered), whose rows stay locked while they
are published, raises it in the transaction that records their outcomes, so a
batch rolled back never raised it.

The claim is two statements in one transaction: the first locks the due
candidates (``FOR UPDATE SKIP LOCKED``), the second, with a snapshot taken
after those locks, sends the heads and parks the rest. Were both in one
statement, a message whose predecessor was delivered (and whose unparking
committed) between the statement's snapshot and its lock would be parked on
stale information, and nothing would unpark it.

Replaying a dead message of an ordered subscriber makes it owed again: the
messages of its object that are still owed and not yet in flight wait behind
it again (they are no longer heads); those already delivered are not sent
again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property

import pgtrigger
from django.db import connection, models, transaction
from pgtrigger import compiler

from audit_stream import triggers

__all__ = [
    "CLAIM_SETTINGS",
    "DUE",
    "DUE_AT",
    "FLOOR_MARGIN",
    "FROM_FLOOR",
    "OBJECT_KEY_SQL",
    "OWED",
    "LeasedClaim",
    "UnparkNext",
    "claim_sql",
    "due_subscribers_sql",
    "floor_sql",
    "head",
    "held_claim_sql",
    "indexes",
    "lower_floor_sql",
    "lower_floors_sql",
    "raise_floor",
    "raise_floor_sql",
    "raised_floor",
]

#: Owed: a message not yet delivered and not dead.
OWED = "('pending', 'sending')"

#: When an owed message ``m`` is due: a pending one at its next attempt, a claimed
#: one when its lease expires (its worker died). The ``..._claimable`` index is on
#: this expression, so that claims read only due messages, in the order they fell
#: due, however many wait for a later retry.
DUE_AT = "(CASE WHEN m.status = 'pending' THEN m.next_attempt_at ELSE m.lease_until END)"

#: A message ``m`` is due: owed, not parked, and its time has come.
DUE = f"(m.status IN {OWED} AND NOT m.held AND {DUE_AT} <= now())"

#: How far below a subscriber's floor its claims start (see the module's docstring): the longest
#: a message may take from the due time it is given to its commit without waiting for the sweep.
#: The fold gives it the time it writes it (audit_stream.outbox), a retry the time of its outcome.
#: Each claim also reads the entries delivered messages left in this window: about 2 per message
#: delivered in it (its pending and its leased versions).
FLOOR_MARGIN = "1 second"

#: From its subscriber's floor (``{floor}``, an SQL expression; NULL: from the first due message).
FROM_FLOOR = f"{DUE_AT} >= coalesce({{floor}} - interval '{FLOOR_MARGIN}', '-infinity')"

# From the floor a claim read, bound as ``%(floor)s``.
_FROM_FLOOR_PARAM = FROM_FLOOR.format(floor="%(floor)s::timestamptz")

#: An SQL expression a claim's transaction evaluates first (``SET LOCAL``): its lock statement
#: reads the ``..._claimable`` index in due order, never another index and a sort. With the floor's
#: range estimated at a row or two, the planner once took the subscriber's index on status instead
#: (in the soak, after an ANALYZE), reading every delivered message's owed versions: 249 ms,
#: 24,873 buffers.
CLAIM_SETTINGS = "set_config('enable_sort', 'off', true)"

#: The object key the fold gives a message of change ``c`` for subscriber ``alias``:
#: NULL (unordered) unless the subscriber is ordered.
OBJECT_KEY_SQL = "CASE WHEN {alias}.ordered THEN c.model || ':' || c.object_id END"


def head(table: str, subscriber: str) -> str:
    """SQL: message ``m`` of ``table`` is the head of its object's queue for its subscriber.

    True for an unordered message (no ``object_key``); otherwise true when no
    message of the same subscriber and object with a smaller ``change_id`` is
    owed. One probe of the ``..._object`` index per message.
    """
    return (
        f"(m.object_key IS NULL OR NOT EXISTS (SELECT 1 FROM {table} AS p"
        f" WHERE p.{subscriber} = m.{subscriber} AND p.object_key IS NOT NULL AND p.object_key = m.object_key"
        f" AND p.status IN {OWED} AND p.change_id < m.change_id))"
    )


def claim_sql(table: str, subscriber: str, returning: str) -> tuple[str, str]:
    """The two statements of a claim on ``table`` for one subscriber (``%(subscriber)s``).

    1. Lock up to ``%(limit)s`` due messages from the subscriber's floor,
       ``%(floor)s`` (:data:`FROM_FLOOR`; NULL: from the first), in the order
       they fell due (``FOR UPDATE SKIP LOCKED``; a range of the
       ``..._claimable`` partial index: O(limit) whatever the backlog waiting
       for later retries or delivered); returns their ids and due times. For
       new messages that order is the order they were recorded.
    2. Given those ids (``%(ids)s``), with a fresh snapshot: lease the heads
       (``status = 'sending'``, ``lease_until = now() + %(lease)s``) and return
       ``returning`` (columns of ``m``) for each; park the others.
    """
    lock = f"""
SELECT m.id, {DUE_AT} FROM {table} AS m
WHERE m.{subscriber} = %(subscriber)s AND {DUE} AND {_FROM_FLOOR_PARAM}
ORDER BY {DUE_AT}
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""
    take = f"""
WITH locked AS (
    SELECT m.id, {head(table, subscriber)} AS is_head
    FROM {table} AS m
    WHERE m.id = ANY(%(ids)s::uuid[])
), parked AS (
    UPDATE {table} AS m SET held = true
    FROM locked WHERE m.id = locked.id AND NOT locked.is_head
)
UPDATE {table} AS m SET status = 'sending', lease_until = now() + %(lease)s::interval
FROM locked
WHERE m.id = locked.id AND locked.is_head
RETURNING {returning}
"""
    return lock, take


def held_claim_sql(table: str, subscriber: str, returning: str) -> str:
    """A claim that holds its row locks instead of leasing: for subscribers that are not ordered.

    Locks up to ``%(limit)s`` due heads of one subscriber (``%(subscriber)s``)
    from its floor (``%(floor)s``, :data:`FROM_FLOOR`), in the order they fell
    due, and returns ``returning`` (columns of ``m``) and then the message's due
    time for each; nothing is written. The caller publishes them and writes their
    outcomes in the same transaction, so each message is updated once, not
    twice (no lease): a worker that dies mid-batch leaves no lease behind, its
    transaction is rolled back and the batch is due again at once (found by
    the sweep, if another claim raised the floor past it meanwhile).

    Messages that are not heads (an object key left by an earlier ordered
    setting) are neither locked nor parked: nothing this transaction holds is
    what another's unparking waits for, so two such claims cannot deadlock.
    The rows are locked in a subquery that reads ids alone, so the rows other
    claims hold (``SKIP LOCKED``) cost no ``returning`` work.
    """
    return f"""
SELECT {returning}, {DUE_AT}
FROM {table} AS m
WHERE m.id = ANY(ARRAY(
    SELECT m.id FROM {table} AS m
    WHERE m.{subscriber} = %(subscriber)s AND {DUE} AND {_FROM_FLOOR_PARAM} AND {head(table, subscriber)}
    ORDER BY {DUE_AT}
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
))
"""


def floor_sql(subscribers: str) -> str:
    """A claim's first statement: its settings (:data:`CLAIM_SETTINGS`), then the floor of subscriber
    ``%(subscriber)s`` of ``subscribers`` and the transaction's start (where the floor rises to when
    the claim takes nothing)."""
    return f"""
SELECT {CLAIM_SETTINGS},
       (SELECT due_floor FROM {subscribers} WHERE id = %(subscriber)s), now()
"""


def raised_floor(due_times: list[datetime], started: datetime) -> datetime:
    """Where a claim raises its subscriber's floor: the due time of the first message it took
    (``due_times``), or with none, its transaction's start. No owed message is due before it but
    those other claims hold."""
    return min(due_times) if due_times else started


def raise_floor_sql(subscribers: str) -> str:
    """Raise the floor of subscriber ``%(subscriber)s`` of ``subscribers`` to ``%(floor)s``.

    Only if it is still ``%(read)s``, the floor the claim started from: a
    sweep that lowered it meanwhile found a message below it, which the next
    claim must see. Never lowers it. A leased claim runs it after its
    transaction, on its own; a held claim in the transaction that records its
    batch's outcomes.
    """
    return f"""
UPDATE {subscribers} SET due_floor = %(floor)s
WHERE id = %(subscriber)s AND due_floor IS NOT DISTINCT FROM %(read)s
  AND (due_floor IS NULL OR due_floor < %(floor)s)
"""


def raise_floor(cursor, sql: str, subscriber: int, read: datetime | None, raised: datetime) -> None:
    """Raise ``subscriber``'s floor from ``read`` to ``raised`` with ``sql`` (:func:`raise_floor_sql`),
    when that moves it: a claim's floor rises only when its first message lies above it."""
    if read is None or raised > read:
        cursor.execute(sql, {"subscriber": subscriber, "floor": raised, "read": read})


def due_subscribers_sql(table: str, subscriber: str, subscribers: str) -> str:
    """The active subscribers of ``subscribers`` with a message of ``table`` due from their floors, as
    the claims read: what the fold and the listener enqueue deliveries for. One probe of the
    ``..._claimable`` index per subscriber, however many messages are due or were delivered.
    """
    return f"""
SELECT s.id
FROM {subscribers} AS s
WHERE s.is_active
  AND EXISTS (
    SELECT 1 FROM {table} AS m
    WHERE m.{subscriber} = s.id AND {DUE} AND {FROM_FLOOR.format(floor="s.due_floor")}
  )
"""


def lower_floor_sql(subscribers: str) -> str:
    """Lower the floor of subscriber ``%(subscriber)s`` of ``subscribers`` to ``%(floor)s``, where it
    lies above: the due time of a batch given back unsent (rolled back), which another claim may
    have raised the floor past meanwhile."""
    return f"""
UPDATE {subscribers} SET due_floor = %(floor)s
WHERE id = %(subscriber)s AND due_floor > %(floor)s
"""


def lower_floors_sql(table: str, subscriber: str, subscribers: str) -> str:
    """The sweep's: the active subscribers of ``subscribers`` with a due message, read from no floor;
    the floor of each lowered to its earliest owed message's due time where that is below it.

    One probe of the ``..._claimable`` index per subscriber, from the oldest
    due times: it walks what the claims skip, once per sweep.
    """
    return f"""
WITH earliest AS MATERIALIZED (
    SELECT s.id, s.due_floor,
           (SELECT min({DUE_AT}) FROM {table} AS m
            WHERE m.{subscriber} = s.id AND m.status IN {OWED} AND NOT m.held) AS due
    FROM {subscribers} AS s
    WHERE s.is_active
), lowered AS (
    UPDATE {subscribers} AS s SET due_floor = e.due
    FROM earliest AS e
    WHERE s.id = e.id AND e.due < s.due_floor
)
SELECT e.id FROM earliest AS e WHERE e.due <= now() ORDER BY e.id
"""


@dataclass(frozen=True)
class LeasedClaim:
    """The statements of a leased claim on one message table, from its subscribers' floors.

    ``table`` holds the messages, ``subscriber`` is its column naming their
    subscriber, ``subscribers`` the subscribers' table (with ``due_floor``);
    ``returning``: the columns of ``m`` :meth:`take` returns per message leased.
    """

    table: str
    subscriber: str
    subscribers: str
    returning: str

    @cached_property
    def read_floor_sql(self) -> str:
        return floor_sql(self.subscribers)

    @cached_property
    def lock_and_lease(self) -> tuple[str, str]:
        return claim_sql(self.table, self.subscriber, self.returning)

    @cached_property
    def raise_floor_sql(self) -> str:
        return raise_floor_sql(self.subscribers)

    def take(self, subscriber: int, limit: int, lease: timedelta) -> list[tuple]:
        """Lease up to ``limit`` due heads of ``subscriber``, in transactions of their own; their rows.

        Due messages that are not heads of their objects' queues are parked, not
        returned: a claim that found only those claims again. After each claim's
        transaction the floor rises (:func:`raised_floor`, :func:`raise_floor_sql`),
        when it moves.
        """
        lock, lease_sql = self.lock_and_lease
        while True:
            rows: list[tuple] = []
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(self.read_floor_sql, {"subscriber": subscriber})
                _, floor, started = cursor.fetchone()
                cursor.execute(lock, {"subscriber": subscriber, "limit": limit, "floor": floor})
                locked = cursor.fetchall()
                if locked:
                    cursor.execute(lease_sql, {"ids": [row[0] for row in locked], "lease": lease})
                    rows = cursor.fetchall()
            with connection.cursor() as cursor:
                raise_floor(
                    cursor,
                    self.raise_floor_sql,
                    subscriber,
                    floor,
                    raised_floor([row[1] for row in locked], started),
                )
            if rows or not locked:
                return rows


def indexes(prefix: str, subscriber: str) -> list[models.Index]:
    """The two partial indexes a message model needs (``subscriber``: its foreign key's field name).

    ``<prefix>_claimable``: owed messages by the time they fall due
    (:data:`DUE_AT`), parked messages left out. ``<prefix>_object``: the owed messages of one
    object, in order, for the head condition and the unparking trigger.
    """
    owed = models.Q(status__in=["pending", "sending"])
    return [
        models.Index(
            models.F(subscriber),
            models.Case(
                models.When(status="pending", then=models.F("next_attempt_at")),
                default=models.F("lease_until"),
            ),
            name=f"{prefix}_claimable",
            condition=owed & models.Q(held=False),
        ),
        models.Index(
            fields=[subscriber, "object_key", "change_id"],
            name=f"{prefix}_object",
            condition=owed & models.Q(object_key__isnull=False),
        ),
    ]


class UnparkNext(pgtrigger.Trigger):
    """When an ordered message stops being owed, unpark the next owed message of its object.

    The message unparked is due from now on, if it was due before: its first
    due time may lie below its subscriber's floor, where no claim looks.

    Declared on both message models. It writes the next message even when it
    is not parked: a claim that is parking it at that moment holds its row
    lock, so this update waits for that claim and then clears ``held`` on the
    row's latest version; otherwise the parking could win, and the message
    would wait for an unparking that already happened.
    """

    when = pgtrigger.After
    operation = pgtrigger.Update
    level = pgtrigger.Row

    def __init__(self, *, name: str, table: str, subscriber: str) -> None:
        self.table, self.subscriber = table, subscriber
        super().__init__(
            name=name,
            condition=pgtrigger.Condition(
                f"OLD.status IN {OWED} AND NEW.status IN ('delivered', 'dead') AND NEW.object_key IS NOT NULL"
            ),
        )

    def get_func(self, model) -> str:
        table = triggers.qualified(self.table)
        return (
            f"UPDATE {table} AS n\n"
            "SET held = false, next_attempt_at = greatest(n.next_attempt_at, clock_timestamp())\n"
            "WHERE n.id = (\n"
            f"    SELECT q.id FROM {table} AS q\n"
            f"    WHERE q.{self.subscriber} = NEW.{self.subscriber}\n"
            "      AND q.object_key IS NOT NULL AND q.object_key = NEW.object_key\n"
            f"      AND q.status IN {OWED} AND q.change_id > NEW.change_id\n"
            "    ORDER BY q.change_id\n"
            "    LIMIT 1\n"
            f") AND n.status IN {OWED};\n"
            "RETURN NULL;"
        )

    def compile(self, model) -> compiler.Trigger:
        # audit_stream's template: SECURITY DEFINER, pinned search_path, no EXCEPTION block.
        compiled = super().compile(model)
        kwargs = dict(compiled.sql.kwargs)
        kwargs.pop("ignore_func_name", None)
        return compiler.Trigger(name=self.name, sql=triggers.TriggerSql(**kwargs))
