"""Delivering messages: signed POSTs with retries, dead letters and replay.

One task delivers the due messages of one endpoint, oldest first, up to 8
requests in flight over one pooled client; endpoints are delivered by separate
tasks, in parallel, so a slow endpoint never stalls the others. Outcomes are
recorded one transaction per claimed batch, not per message. Each message is claimed
with a lease (``status = sending``) in a short transaction and its outcome
recorded in another: no transaction stays open during an HTTP request, and a
worker that dies mid-request leaves a lease that expires, so the message is
sent again (at least once).

Retries follow ``AUDIT_STREAM["WEBHOOK_RETRY_SCHEDULE"]`` (seconds before each
attempt: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h), with ±10%
jitter, or the receiver's ``Retry-After`` when it sends one. After the last
attempt the message is ``dead``: visible, and replayable. An endpoint that
answers 410 Gone is disabled at once; one that has failed every attempt for
``WEBHOOK_DISABLE_AFTER`` (5 days) is disabled, with the reason.

Ordering: by default none is guaranteed across messages (retries overtake).
Each payload carries ``data.event_id``, which grows per object in the order
the changes happened, and ``data.event_table``: a receiver keeps the highest
event id seen per object and ignores older deliveries, and de-duplicates on
``webhook-id``. An endpoint declared ``ordered`` gets an object's next message
only once the previous one was delivered or went dead (:mod:`audit_stream.ordering`).

Requests go through :mod:`audit_stream.webhooks.transport` (``http.client``,
one kept-alive connection per sending thread).
"""

from __future__ import annotations

import email.utils
import json
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import quote, urlsplit, urlunsplit

from django.db import connection, transaction
from django.db.models import F
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from audit_stream import config, ordering
from audit_stream.webhooks import safety, signing, transport
from audit_stream.webhooks.models import WebhookEndpoint, WebhookMessage

__all__ = ["DeliveryResult", "delete_endpoint", "deliver", "replay", "replay_failed", "send_test"]

_CLAIM = 100  # messages claimed at a time
_PARALLEL = 16  # requests in flight per endpoint, over as many keep-alive connections
_EXCERPT = 500

# A message is due when it is pending and its time has come, or when it was
# claimed and its lease expired (its worker died); never while it is parked
# behind its object's head (ordered endpoints). Shared by every query below
# and by the listener.
DUE = ordering.DUE

# Active endpoints with a due message from their floor (audit_stream.ordering): the listener
# enqueues their deliveries.
DUE_ENDPOINTS_SQL = ordering.due_subscribers_sql(
    "audit_stream_webhookmessage", "endpoint_id", "audit_stream_webhookendpoint"
)

# The sweep's: the same from no floor, each endpoint's floor lowered to its earliest owed message.
SWEEP_DUE_ENDPOINTS_SQL = ordering.lower_floors_sql(
    "audit_stream_webhookmessage", "endpoint_id", "audit_stream_webhookendpoint"
)

# Whether an endpoint is active and has a message due, from its floor (a disabled endpoint's
# messages wait: nothing is sent, so nothing must be enqueued for them).
_HAS_DUE_SQL = f"""
SELECT EXISTS (
    SELECT 1 FROM audit_stream_webhookmessage AS m
    WHERE m.endpoint_id = %(endpoint)s AND {DUE} AND {
    ordering.FROM_FLOOR.format(
        floor="(SELECT ep.due_floor FROM audit_stream_webhookendpoint AS ep WHERE ep.id = %(endpoint)s)"
    )
}
) AND EXISTS (SELECT 1 FROM audit_stream_webhookendpoint AS ep WHERE ep.id = %(endpoint)s AND ep.is_active)
"""

# Claim up to `limit` due messages of one endpoint, in the order they fell due
# (a range of the audit_stream_msg_claimable index), sending
# only the heads of their objects' queues (audit_stream.ordering; every
# message of an unordered endpoint is a head). The body is PostgreSQL's own
# text of the JSONB payload: numbers stay exact, and every attempt sends the
# same bytes; the payload itself is not decoded.
_CLAIMS = ordering.LeasedClaim(
    "audit_stream_webhookmessage",
    "endpoint_id",
    "audit_stream_webhookendpoint",
    returning="m.id, m.attempts, m.created_at, m.payload::text",
)
_LOCK_SQL, _CLAIM_SQL = _CLAIMS.lock_and_lease

# A batch's outcomes, one statement: each message's attempt row, and its new status,
# attempts, error and next attempt (NULL: unchanged), as parallel arrays.
_RECORD_SQL = """
WITH o AS (
    SELECT * FROM unnest(
        %(ids)s::uuid[], %(statuses)s::text[], %(attempts)s::int[], %(errors)s::text[],
        %(next)s::timestamptz[], %(codes)s::int[], %(durations)s::int[], %(excerpts)s::text[],
        %(succeeded)s::bool[]
    ) AS o (id, status, attempts, last_error, next_attempt_at, status_code, duration_ms,
            response_excerpt, succeeded)
), logged AS (
    INSERT INTO audit_stream_webhookattempt
        (message_id, attempted_at, status_code, duration_ms, response_excerpt, error, succeeded)
    SELECT o.id, now(), o.status_code, o.duration_ms, o.response_excerpt, o.last_error, o.succeeded
    FROM o
)
UPDATE audit_stream_webhookmessage AS m
SET status = o.status, attempts = o.attempts, lease_until = NULL, last_error = o.last_error,
    next_attempt_at = coalesce(o.next_attempt_at, m.next_attempt_at),
    delivered_at = CASE WHEN o.status = 'delivered' THEN %(now)s ELSE m.delivered_at END
FROM o
WHERE m.id = o.id
"""


@dataclass(frozen=True)
class _Claimed:
    """A message leased for one attempt: what sending and recording it need, nothing decoded."""

    pk: uuid.UUID
    attempts: int
    created_at: datetime
    body: str

    @property
    def webhook_id(self) -> str:
        return f"msg_{self.pk.hex}"


@dataclass
class Outcome:
    """What one HTTP attempt gave."""

    status_code: int | None = None
    duration_ms: int = 0
    response_excerpt: str = ""
    error: str = ""
    retry_after: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass
class DeliveryResult:
    """What one call of :func:`deliver` did."""

    endpoint_id: int
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    more: bool = False  # stopped by its budget with messages still due
    errors: list[str] = field(default_factory=list)


def deliver(endpoint_id: int, *, max_messages: int = 1000, max_seconds: float = 20.0) -> DeliveryResult:
    """Deliver the due messages of one endpoint, until none is due or the budget is spent.

    Claims up to ``_CLAIM`` messages at a time, sends them ``_PARALLEL`` at a
    time over one pooled client of keep-alive connections (one at a time,
    paced, if the endpoint has a rate limit), then records every outcome in
    one transaction. Batches are pipelined: while one batch is being sent,
    the next is claimed and the previous one recorded, so the database's
    round trips and commits overlap the HTTP requests. (After an answer that
    disables the endpoint, the batch already claimed is still sent.)
    """
    result = DeliveryResult(endpoint_id)
    deadline = time.monotonic() + max_seconds
    connect, read = config.webhook_timeouts()
    with (
        transport.Pool(connect, read) as client,
        ThreadPoolExecutor(_PARALLEL, thread_name_prefix="audit_stream-deliver") as pool,
        ThreadPoolExecutor(1, thread_name_prefix="audit_stream-batch") as sender,
    ):
        in_flight = None  # (endpoint, batch, future outcomes) of the batch being sent
        while True:
            endpoint = WebhookEndpoint.objects.filter(pk=endpoint_id, is_active=True).first()
            batch: list[_Claimed] = []
            sent = result.delivered + result.failed + (len(in_flight[1]) if in_flight else 0)
            if endpoint is not None:
                if sent >= max_messages or time.monotonic() > deadline:
                    result.more = has_due(endpoint_id)
                else:
                    batch = _claim(endpoint_id, min(_CLAIM, max_messages - sent), _lease(endpoint))
            following = None
            if batch:
                following = (endpoint, batch, sender.submit(_send_batch, client, pool, endpoint, batch))
            recorded = None
            if in_flight is not None:
                flown, flown_batch, outcomes = in_flight
                recorded = _record(flown, flown_batch, outcomes.result(), result)
                if not recorded.is_active and following is not None:
                    endpoint = None  # stop after the batch already claimed
            in_flight = following
            if in_flight is None:
                if recorded is not None and recorded.ordered and recorded.is_active:
                    continue  # the batch just recorded made its objects' next messages heads: claim them
                return result
            if endpoint is None or not endpoint.is_active:
                flown, flown_batch, outcomes = in_flight
                _record(flown, flown_batch, outcomes.result(), result)
                return result


def _send_batch(
    client: transport.Pool, pool: ThreadPoolExecutor, endpoint: WebhookEndpoint, batch: list[_Claimed]
) -> list[Outcome]:
    """Send one batch: the URL checked (and resolved) once, every request to the address that passed."""
    try:
        resolved = safety.resolve(endpoint.url)
    except safety.UnsafeURL as exc:
        resolved = exc
    if endpoint.rate_limit:
        return _send_paced(client, endpoint, batch, resolved)
    return list(pool.map(lambda message: _send(client, endpoint, message, resolved), batch))


def _send_paced(
    client: transport.Pool, endpoint: WebhookEndpoint, batch: list[_Claimed], resolved=None
) -> list[Outcome]:
    pause = 1.0 / endpoint.rate_limit
    outcomes = []
    for message in batch:
        started = time.monotonic()
        outcomes.append(_send(client, endpoint, message, resolved))
        time.sleep(max(0.0, pause - (time.monotonic() - started)))
    return outcomes


def _lease(endpoint: WebhookEndpoint) -> timedelta:
    """Long enough to try every claimed message once at the slowest, then 5 s: a worker that
    dies mid-batch delays its messages by about that much, never loses them."""
    connect, read = config.webhook_timeouts()
    if endpoint.rate_limit:
        return timedelta(seconds=_CLAIM * (connect + read + 1.0 / endpoint.rate_limit) + 5)
    rounds = -(-_CLAIM // _PARALLEL)
    return timedelta(seconds=rounds * (connect + read) + 5)


def _claim(endpoint_id: int, limit: int, lease: timedelta) -> list[_Claimed]:
    """Lease up to ``limit`` due messages from the endpoint's floor, oldest first, with their bodies
    (the payload is not decoded); due messages that are not the heads of their objects' queues are
    parked, not returned (:meth:`audit_stream.ordering.LeasedClaim.take`)."""
    claimed = [_Claimed(*row) for row in _CLAIMS.take(endpoint_id, limit, lease)]
    return sorted(claimed, key=lambda m: (m.created_at, m.pk))


def has_due(endpoint_id: int) -> bool:
    """Whether the endpoint is active and has a message due now (or whose lease expired), from its floor."""
    with connection.cursor() as cursor:
        cursor.execute(_HAS_DUE_SQL, {"endpoint": endpoint_id})
        return cursor.fetchone()[0]


def _body(message: _Claimed | WebhookMessage) -> str:
    body = getattr(message, "body", None)
    return body if body is not None else json.dumps(message.payload, ensure_ascii=False)


def _send(client: transport.Pool, endpoint: WebhookEndpoint, message: _Claimed, resolved=None) -> Outcome:
    """One signed POST to the address that passed the safety check.

    ``resolved``: the batch's ``safety.resolve(endpoint.url)`` (or the
    ``UnsafeURL`` it raised); resolved here when not given.
    """
    started = time.monotonic()
    try:
        if resolved is None:
            resolved = safety.resolve(endpoint.url)
        if isinstance(resolved, safety.UnsafeURL):
            raise resolved
        host, port, address = resolved
    except safety.UnsafeURL as exc:
        return Outcome(error=f"refused: {exc}")
    parts = urlsplit(endpoint.url)
    # Non-ASCII characters and spaces percent-encoded; every other character as written.
    path = quote(urlunsplit(("", "", parts.path or "/", parts.query, "")), safe="!#$%&'()*+,/:;=?@[]~")
    default_port = 443 if parts.scheme == "https" else 80
    body = _body(message)
    headers = signing.headers(message.webhook_id, timezone.now(), body, endpoint.signing_secrets())
    headers["host"] = host if port == default_port else f"{host}:{port}"
    headers["user-agent"] = "audit_stream-webhooks/1"
    try:
        response = client.post(parts.scheme, address, port, host, path, body.encode(), headers)
    except (transport.ConnectTimeout, transport.ReadTimeout) as exc:
        return Outcome(duration_ms=_ms(started), error=f"timeout: {type(exc).__name__}")
    except transport.TransportError as exc:
        return Outcome(duration_ms=_ms(started), error=f"{type(exc).__name__}: {exc}"[:_EXCERPT])
    outcome = Outcome(
        status_code=response.status_code,
        duration_ms=_ms(started),
        response_excerpt=response.text[:_EXCERPT],
        retry_after=_retry_after(response.headers.get("retry-after")),
    )
    if 300 <= response.status_code < 400:
        outcome.error = f"redirect to {response.headers.get('location', '?')} not followed"
    elif not outcome.succeeded:
        outcome.error = f"HTTP {response.status_code}"
    return outcome


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), capped at a day."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.now(when.tzinfo)).total_seconds()
    return min(max(seconds, 0.0), 86400.0)


def _next_delay(attempts: int, outcome: Outcome) -> float | None:
    """Seconds until the next attempt after ``attempts`` failed ones; ``None``: give up."""
    schedule = config.webhook_retry_schedule()
    if attempts >= len(schedule):
        return None
    if outcome.retry_after is not None:
        return outcome.retry_after
    delay = schedule[attempts]
    return delay * random.uniform(0.9, 1.1)


def _record(
    endpoint: WebhookEndpoint, batch: list[_Claimed], outcomes: list[Outcome], result: DeliveryResult
) -> WebhookEndpoint:
    """Store a batch's attempts and their consequences in one transaction (one commit per batch)."""
    now = timezone.now()
    with transaction.atomic():
        changes = {
            "ids": [], "statuses": [], "attempts": [], "errors": [], "next": [],
            "codes": [o.status_code for o in outcomes], "durations": [o.duration_ms for o in outcomes],
            "excerpts": [o.response_excerpt for o in outcomes], "succeeded": [o.succeeded for o in outcomes],
        }  # fmt: skip
        for message, outcome in zip(batch, outcomes, strict=True):
            attempts = message.attempts + 1
            status, next_at = WebhookMessage.DELIVERED, None
            if outcome.succeeded:
                result.delivered += 1
            else:
                result.failed += 1
                result.errors.append(outcome.error)
                delay = _next_delay(attempts, outcome)
                if delay is None:
                    result.dead += 1
                    status = WebhookMessage.DEAD
                else:
                    status, next_at = WebhookMessage.PENDING, now + timedelta(seconds=delay)
            changes["ids"].append(message.pk)
            changes["statuses"].append(status)
            changes["attempts"].append(attempts)
            changes["errors"].append(outcome.error)
            changes["next"].append(next_at)
        with connection.cursor() as cursor:
            cursor.execute(_RECORD_SQL, {**changes, "now": now})

        # The endpoint's failure streak: reset by a success, grown by the failures after it.
        trailing = len(outcomes)
        for index, outcome in enumerate(outcomes):
            if outcome.succeeded:
                trailing = len(outcomes) - index - 1
        succeeded = sum(1 for o in outcomes if o.succeeded)
        # The lifetime counters grow in the same statement as the streak (one row update per batch).
        counted = {
            "attempts_succeeded": F("attempts_succeeded") + succeeded,
            "attempts_failed": F("attempts_failed") + (len(outcomes) - succeeded),
        }
        if succeeded:
            WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
                consecutive_failures=trailing, failing_since=now if trailing else None, **counted
            )
        else:
            WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
                consecutive_failures=F("consecutive_failures") + trailing,
                failing_since=Coalesce("failing_since", Now()),
                **counted,
            )
        endpoint = WebhookEndpoint.objects.get(pk=endpoint.pk)
        failing_for = (now - endpoint.failing_since).total_seconds() if endpoint.failing_since else 0.0
        last_failure = next((o for o in reversed(outcomes) if not o.succeeded), None)
        if any(o.status_code == 410 for o in outcomes):
            endpoint.disable("The endpoint answered 410 Gone.")
        elif last_failure is not None and trailing and failing_for >= config.webhook_disable_after():
            endpoint.disable(
                f"Every attempt failed for {timedelta(seconds=int(failing_for))}"
                f" ({endpoint.consecutive_failures} in a row); last: {last_failure.error}"
            )
        return endpoint


def replay(messages) -> int:
    """Deliver these messages again from a fresh retry schedule (delivered ones too). Returns how many."""
    return WebhookMessage.objects.filter(pk__in=[getattr(m, "pk", m) for m in messages]).update(
        status=WebhookMessage.PENDING,
        attempts=0,
        next_attempt_at=Now(),  # the database's clock, as the claims' floor (audit_stream.ordering)
        lease_until=None,
        held=False,
    )


def replay_failed(endpoint: WebhookEndpoint | int, since: datetime | None = None) -> int:
    """Replay every dead message of an endpoint created since ``since`` (all: ``None``). Returns how many."""
    dead = WebhookMessage.objects.filter(
        endpoint_id=getattr(endpoint, "pk", endpoint), status=WebhookMessage.DEAD
    )
    if since is not None:
        dead = dead.filter(created_at__gte=since)
    return dead.update(
        status=WebhookMessage.PENDING,
        attempts=0,
        next_attempt_at=Now(),
        lease_until=None,
        held=False,
    )


def send_test(endpoint: WebhookEndpoint) -> WebhookMessage:
    """Queue a test message (type ``audit_stream.test``) for ``endpoint``."""
    now = timezone.now()
    return WebhookMessage.objects.create(
        endpoint=endpoint,
        event_type="audit_stream.test",
        payload={"type": "audit_stream.test", "timestamp": now.isoformat(), "data": {"message": "It works."}},
    )


# An endpoint's attempts, then its messages, by key: set-based, never loaded into Python.
_DELETE_ATTEMPTS_SQL = """
DELETE FROM audit_stream_webhookattempt AS a
USING audit_stream_webhookmessage AS m
WHERE a.message_id = m.id AND m.endpoint_id = %s
"""
_DELETE_MESSAGES_SQL = "DELETE FROM audit_stream_webhookmessage WHERE endpoint_id = %s"


def delete_endpoint(endpoint: WebhookEndpoint) -> int:
    """Delete ``endpoint``, its messages and their attempts in one transaction; returns the messages."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_DELETE_ATTEMPTS_SQL, [endpoint.pk])
        cursor.execute(_DELETE_MESSAGES_SQL, [endpoint.pk])
        deleted = cursor.rowcount
        WebhookEndpoint.objects.filter(pk=endpoint.pk).delete()
    return deleted
