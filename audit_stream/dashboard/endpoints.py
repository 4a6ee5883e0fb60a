"""Webhook endpoints on the dashboard: each one's 24-hour record and queue, its messages and their attempts.

Queue sizes use the ``(endpoint, status, created_at)`` index: exactly up to
:data:`QUEUE_CAP`, the planner's estimate beyond ("≈"); the 24-hour record
comes from the hourly counts kept as attempts are recorded
(:mod:`audit_stream.webhooks.tally`); the message list is paginated by keyset.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from django.db import DEFAULT_DB_ALIAS, transaction
from django.utils import timezone

from audit_stream.dashboard import formats, paging
from audit_stream.dashboard.paging import Page
from audit_stream.dashboard.reading import rows
from audit_stream.webhooks import tally
from audit_stream.webhooks.models import WebhookAttempt, WebhookEndpoint, WebhookMessage

__all__ = [
    "QUEUE_CAP",
    "EndpointHealth",
    "age",
    "attempts",
    "capped",
    "decode_cursor",
    "encode_cursor",
    "endpoint_health",
    "estimate_messages",
    "message_page",
    "queue_sql",
]

#: Messages counted exactly per endpoint and status, at most; beyond, estimated ("≈").
#: Each counted message is a read of its row, scattered over the table (no
#: index answers alone before a vacuum): 10,000 of each status took 0.1-0.5 s
#: per page at 1,000,000 messages.
QUEUE_CAP = 100


@dataclass
class EndpointHealth:
    """One endpoint: its delivery record over 24 hours and its queue."""

    endpoint: WebhookEndpoint
    attempts_24h: int = 0
    succeeded_24h: int = 0
    last_error: str = ""
    last_error_at: datetime | None = None
    pending: int = 0
    sending: int = 0
    dead: int = 0
    oldest_pending_at: datetime | None = None
    estimated: set[str] = field(default_factory=set)  # the statuses past QUEUE_CAP, estimated

    @property
    def oldest_pending_age(self) -> str:
        return age(self.oldest_pending_at)

    @property
    def last_error_age(self) -> str:
        return age(self.last_error_at)

    @property
    def success_rate(self) -> float | None:
        return self.succeeded_24h / self.attempts_24h if self.attempts_24h else None

    @property
    def success_rate_display(self) -> str:
        return formats.percent(self.success_rate)

    @property
    def pending_display(self) -> str:
        return _queue_size(self.pending, "pending" in self.estimated)

    @property
    def sending_display(self) -> str:
        return _queue_size(self.sending, "sending" in self.estimated)

    @property
    def dead_display(self) -> str:
        return _queue_size(self.dead, "dead" in self.estimated)

    @property
    def health(self) -> str:
        """``disabled``, ``failing`` (a failure streak), ``degraded`` (under 95% in 24 h) or ``ok``."""
        if not self.endpoint.is_active:
            return "disabled"
        if self.endpoint.consecutive_failures:
            return "failing"
        rate = self.success_rate
        return "degraded" if rate is not None and rate < 0.95 else "ok"


def capped(number: int) -> str:
    """A queue size counted up to QUEUE_CAP: ``"10,000+"`` when it reached it."""
    return formats.count(number) + ("+" if number >= QUEUE_CAP else "")


def _queue_size(number: int, estimated: bool) -> str:
    """A queue size: exact, or ``"≈12,345"`` when it was past QUEUE_CAP and estimated."""
    return ("≈" if estimated else "") + formats.count(number)


# The planner's estimate of one endpoint's messages of one status: a branch per
# pair in one EXPLAIN (planned, never run). With the statistics of endpoint and
# status together (migration 0026), each pair has its own frequency.
_ESTIMATE_BRANCH_SQL = (
    "SELECT 1 FROM audit_stream_webhookmessage AS m WHERE m.endpoint_id = %s AND m.status = %s"
)


def estimate_messages(pairs: list[tuple[int, str]], using: str = DEFAULT_DB_ALIAS) -> list[int]:
    """The planner's estimates of the messages of ``pairs`` (endpoint id, status), in order; one query."""
    if not pairs:
        return []
    sql = " UNION ALL ".join([_ESTIMATE_BRANCH_SQL] * len(pairs))
    # A parallel Append reorders its branches (by cost): only a plain one keeps the pairs' order.
    with transaction.atomic(using=using):
        rows("SET LOCAL max_parallel_workers_per_gather = 0", using=using)
        plan = rows("EXPLAIN (FORMAT JSON) " + sql, [v for pair in pairs for v in pair], using)[0][0]
    plan = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
    branches = plan["Plans"] if len(pairs) > 1 else [plan]
    if len(branches) != len(pairs):
        raise RuntimeError(f"EXPLAIN gave {len(branches)} estimates for {len(pairs)} queues: {plan}")
    return [int(branch["Plan Rows"]) for branch in branches]


def age(when: datetime | None) -> str:
    return formats.duration((timezone.now() - when).total_seconds()) if when else "—"


# Attempts of the last 24 hours per endpoint come from the counts kept per
# hour as attempts are recorded (audit_stream.webhooks.tally): 24 rows per
# endpoint, never the attempts themselves.
_ATTEMPTS_24H_SQL = tally.LAST_24_HOURS_SQL

# Each endpoint's (or sink's) queue: messages per status, each count capped,
# and the oldest pending one. Every subquery is a range of the messages'
# (owner, status, created_at) index.
_QUEUE_TEMPLATE = """
SELECT o.id,
       (SELECT count(*) FROM (SELECT 1 FROM {messages} AS m
                              WHERE m.{owner} = o.id AND m.status = %(pending)s
                              LIMIT %(cap)s) AS s),
       (SELECT count(*) FROM (SELECT 1 FROM {messages} AS m
                              WHERE m.{owner} = o.id AND m.status = %(sending)s
                              LIMIT %(cap)s) AS s),
       (SELECT count(*) FROM (SELECT 1 FROM {messages} AS m
                              WHERE m.{owner} = o.id AND m.status = %(dead)s
                              LIMIT %(cap)s) AS s),
       (SELECT min(m.created_at) FROM {messages} AS m
        WHERE m.{owner} = o.id AND m.status = %(pending)s)
FROM {owners} AS o
WHERE %(owner_id)s::bigint IS NULL OR o.id = %(owner_id)s::bigint
"""


def queue_sql(messages: str, owner: str, owners: str) -> str:
    """The queue query over the message table ``messages``, whose column ``owner`` points into ``owners``.

    Parameters: ``owner_id`` (one owner, or ``None`` for all), ``cap``, and the
    ``pending``, ``sending`` and ``dead`` statuses. Rows: id, pending, sending,
    dead, oldest pending message's time.
    """
    return _QUEUE_TEMPLATE.format(messages=messages, owner=owner, owners=owners)


_QUEUE_SQL = queue_sql("audit_stream_webhookmessage", "endpoint_id", "audit_stream_webhookendpoint")


def endpoint_health(endpoint_id: int | None = None, using: str = DEFAULT_DB_ALIAS) -> list[EndpointHealth]:
    """Every endpoint (or one), oldest first, with its 24-hour record and its queue."""
    endpoints = WebhookEndpoint.objects.using(using).order_by("id")
    if endpoint_id is not None:
        endpoints = endpoints.filter(pk=endpoint_id)
    found = {endpoint.pk: EndpointHealth(endpoint) for endpoint in endpoints}
    params = {"endpoint": endpoint_id}
    for pk, attempts, succeeded, last_error, last_error_at in rows(_ATTEMPTS_24H_SQL, params, using):
        if pk in found:
            health = found[pk]
            health.attempts_24h, health.succeeded_24h = attempts, succeeded
            health.last_error, health.last_error_at = last_error or "", last_error_at
    params.update(
        owner_id=endpoint_id,
        cap=QUEUE_CAP,
        pending=WebhookMessage.PENDING,
        sending=WebhookMessage.SENDING,
        dead=WebhookMessage.DEAD,
    )
    capped = []
    for pk, pending, sending, dead, oldest in rows(_QUEUE_SQL, params, using):
        if pk in found:
            health = found[pk]
            health.pending, health.sending, health.dead, health.oldest_pending_at = (
                pending,
                sending,
                dead,
                oldest,
            )
            sizes = {"pending": pending, "sending": sending, "dead": dead}
            capped += [(pk, status) for status, size in sizes.items() if size >= QUEUE_CAP]
    for (pk, status), estimate in zip(capped, estimate_messages(capped, using), strict=True):
        setattr(found[pk], status, max(estimate, QUEUE_CAP))
        found[pk].estimated.add(status)
    return list(found.values())


# One branch per status asked for: the newest messages of one endpoint and
# status, an ordered range of the (endpoint, status, created_at) index. The
# branches are merged and cut to one page. A keyset cursor (created_at, id)
# continues after the last row of the previous page, without OFFSET. The
# payload is not read: the list does not show it.
_MESSAGE_BRANCH_SQL = """
(SELECT id, endpoint_id, change_id, event_type, status, attempts, next_attempt_at,
        lease_until, last_error, created_at, delivered_at
 FROM audit_stream_webhookmessage
 WHERE endpoint_id = %(endpoint)s AND status = %({status})s{conditions}
 ORDER BY created_at DESC, id DESC
 LIMIT %(limit)s)
"""
_MESSAGE_CONDITIONS = {
    "since": " AND created_at >= %(since)s",
    "until": " AND created_at < %(until)s",
    # The first test lets the index bound the range; the row comparison is exact.
    "before": " AND created_at <= %(before_at)s AND (created_at, id) < (%(before_at)s, %(before_id)s)",
}


def encode_cursor(created_at: datetime, pk: uuid.UUID) -> str:
    return f"{created_at.isoformat()}~{pk.hex}"


def decode_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    """``(created_at, id)`` from a ``?before=`` value; ``None`` if absent or malformed."""
    if not cursor:
        return None
    created, _, pk = cursor.partition("~")
    try:
        when = datetime.fromisoformat(created)
        return (when if timezone.is_aware(when) else timezone.make_aware(when)), uuid.UUID(pk)
    except ValueError:
        return None


def message_page(
    endpoint_id: int,
    *,
    statuses: list[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: str | None = None,
    limit: int | None = None,
    using: str = DEFAULT_DB_ALIAS,
) -> Page:
    """The messages of one endpoint, newest first, optionally by status and creation time."""
    limit = limit or paging.PAGE_SIZE
    statuses = statuses or [status for status, _ in WebhookMessage.STATUSES]
    params: dict = {"endpoint": endpoint_id, "limit": limit + 1, "since": since, "until": until}
    conditions = "".join(_MESSAGE_CONDITIONS[name] for name in ("since", "until") if params[name])
    cursor = decode_cursor(before)
    if cursor:
        params["before_at"], params["before_id"] = cursor
        conditions += _MESSAGE_CONDITIONS["before"]
    branches = []
    for index, status in enumerate(statuses):
        params[f"status_{index}"] = status
        branches.append(_MESSAGE_BRANCH_SQL.format(status=f"status_{index}", conditions=conditions))
    sql = (
        f"SELECT * FROM ({' UNION ALL '.join(branches)}) AS m"
        " ORDER BY created_at DESC, id DESC LIMIT %(limit)s"
    )
    items = list(WebhookMessage.objects.using(using).raw(sql, params))
    older = encode_cursor(items[limit - 1].created_at, items[limit - 1].id) if len(items) > limit else None
    return Page(items=items[:limit], older=older, is_first=cursor is None)


def attempts(message: WebhookMessage, limit: int = 100) -> list[WebhookAttempt]:
    """A message's attempts, newest first (index on message_id)."""
    return list(message.attempt_log.order_by("-attempted_at", "-id")[:limit])
