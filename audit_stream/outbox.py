"""The outbox: messages owed to subscribers, one table per kind of subscriber, one shape for both.

Webhook endpoints (``audit_stream_webhookmessage``) and sinks
(``audit_stream_sinkmessage``) each keep the changes they are owed in a table
of their own, with the same columns (:class:`OwedMessage`), recorded the same
way by the fold in its transaction (:func:`record_sql`, :func:`record`): the
payload is the feed format (:mod:`audit_stream.payload`), the filters are the
ones every subscriber shares (:func:`audit_stream.payload.matches`), and an
ordered subscriber's messages carry their object's key
(:mod:`audit_stream.ordering`). What differs, the subscriber and how a
message is delivered, stays in :mod:`audit_stream.webhooks` and
:mod:`audit_stream.sinks`.
"""

from __future__ import annotations

import uuid

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models.functions import Now

from audit_stream import ordering, payload
from audit_stream.exact import ExactDecoder

__all__ = ["OwedMessage", "record", "record_sql"]


class OwedMessage(models.Model):
    """One change owed to one subscriber; its id is stable across retries and replays (``msg_<hex>``)."""

    PENDING = "pending"  # waiting for its next attempt
    SENDING = "sending"  # claimed by a worker until lease_until
    DELIVERED = "delivered"
    DEAD = "dead"  # retries exhausted (or a webhook endpoint gone): replay to try again
    STATUSES = [(s, s) for s in (PENDING, SENDING, DELIVERED, DEAD)]

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    change_id = models.BigIntegerField(null=True, help_text="The Change this message carries.")
    event_type = models.TextField(help_text='"<app>.<model>.<label>"')
    payload = models.JSONField(encoder=DjangoJSONEncoder, decoder=ExactDecoder)
    status = models.CharField(max_length=10, choices=STATUSES, default=PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(db_default=Now())
    lease_until = models.DateTimeField(null=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(db_default=Now())
    delivered_at = models.DateTimeField(null=True)
    # Ordered subscribers (audit_stream.ordering): the message's object, and whether a claim found it
    # waiting behind an earlier message of that object (left out of the claim's scan).
    object_key = models.TextField(null=True, blank=True, editable=False)
    held = models.BooleanField(default=False, db_default=False, editable=False)

    class Meta:
        abstract = True


def record_sql(messages: str, subscriber: str, subscribers: str) -> str:
    """The INSERT of the messages owed for the changes just folded (``%(change_ids)s``).

    One message per change and matching active subscriber of ``subscribers``
    (its id in the column ``subscriber`` of ``messages``), in change order;
    returns each message's subscriber. data.event_id (pgh_id) grows per object in
    the order changes happened: a receiver re-orders or drops stale deliveries with it.
    A message is due from when it is written (``clock_timestamp()``, not the fold
    transaction's start): its commit follows within milliseconds, well inside the
    claims' margin below their floor (:data:`audit_stream.ordering.FLOOR_MARGIN`).
    """
    return f"""
INSERT INTO {messages}
    (id, {subscriber}, change_id, event_type, payload, status, attempts, next_attempt_at,
     last_error, created_at, object_key)
SELECT gen_random_uuid(), s.id, c.id, {payload.TYPE_SQL}, {payload.PAYLOAD_SQL},
       'pending', 0, clock_timestamp(), '', now(), {ordering.OBJECT_KEY_SQL.format(alias="s")}
FROM audit_stream_change AS c
JOIN {subscribers} AS s ON {payload.matches("s")}
{payload.FROM_SQL}
WHERE c.id = ANY(%(change_ids)s::bigint[])
ORDER BY c.id, s.id
RETURNING {subscriber}
"""


def record(cursor, change_ids: list[int], *, sql: str, subscribers: str) -> set[int]:
    """Record the messages owed for ``change_ids`` with ``sql`` (:func:`record_sql`); who got some."""
    if not change_ids:
        return set()
    cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {subscribers} WHERE is_active)")
    if not cursor.fetchone()[0]:
        return set()  # nobody listens: no transaction sizes to count
    sizes = payload.transaction_sizes(cursor, change_ids)
    cursor.execute(sql, {"change_ids": change_ids, **sizes})
    return {row[0] for row in cursor.fetchall()}
