"""Sinks (message-broker targets of the change feed) and the messages owed to them."""

from __future__ import annotations

import pgtrigger
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Now

from audit_stream import ordering
from audit_stream.outbox import OwedMessage
from audit_stream.sinks.base import KINDS

__all__ = ["Sink", "SinkMessage"]


class Sink(models.Model):
    """A broker target (NATS JetStream, Redis Streams, RabbitMQ) receiving the matching changes."""

    NATS = "nats"
    REDIS = "redis"
    RABBITMQ = "rabbitmq"
    KIND_CHOICES = [(NATS, "NATS JetStream"), (REDIS, "Redis Streams"), (RABBITMQ, "RabbitMQ")]

    name = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=20, choices=KIND_CHOICES)
    target = models.TextField(
        help_text="nats://host:4222, redis://host:6379/0 or amqp://user:pass@host:5672/"
    )
    options = models.JSONField(
        default=dict,
        blank=True,
        help_text="Per kind: stream, subject_prefix, stream_prefix, maxlen, exchange, queue.",
    )
    is_active = models.BooleanField(default=True)
    filter_models = ArrayField(
        models.TextField(),
        default=list,
        blank=True,
        help_text='Only these models ("app_label.model"); empty: all.',
    )
    filter_labels = ArrayField(
        models.TextField(), default=list, blank=True, help_text="Only these event labels; empty: all."
    )
    ordered = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Per object, in order: an object's next change is published once the previous one was"
        " acknowledged or went dead (other objects keep flowing). Applies to changes recorded from now on.",
    )
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    # Kept by the delivery (one UPDATE per batch, in the transaction recording its
    # outcomes); never counted from messages, which retention prunes.
    messages_delivered = models.BigIntegerField(default=0, db_default=0, editable=False)
    attempts_failed = models.BigIntegerField(default=0, db_default=0, editable=False)
    last_delivered_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, default="", db_default="", editable=False)
    last_error_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Claims start here, less ordering.FLOOR_MARGIN: no owed message is due before it but those
    # the sweep finds (audit_stream.ordering). NULL: not known yet, claims start at the first.
    due_floor = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        db_table = "audit_stream_sink"
        verbose_name = "sink"

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    def save(self, *args, **kwargs) -> None:
        self.filter_models = [m.lower() for m in self.filter_models]
        super().save(*args, **kwargs)

    def clean(self) -> None:
        if self.kind not in KINDS:
            raise ValidationError({"kind": f"Choose one of: {', '.join(sorted(KINDS))}."})
        if not isinstance(self.options, dict):
            raise ValidationError({"options": 'Write a JSON object, e.g. {"stream": "AUDIT"}.'})


class SinkMessage(OwedMessage):
    """One change owed to one sink; its id (``msg_<hex>``) is stable across retries and replays."""

    # No index of its own: the two below lead with sink (each message update writes every index).
    sink = models.ForeignKey(Sink, on_delete=models.CASCADE, related_name="messages", db_index=False)

    class Meta:
        db_table = "audit_stream_sinkmessage"
        verbose_name = "sink message"
        indexes = [
            # The claim's "oldest due messages of a sink" (its ORDER BY), and an object's queue.
            *ordering.indexes("audit_stream_sinkmsg", "sink"),
            models.Index(fields=["sink", "status", "created_at"], name="audit_stream_sinkmsg_status"),
        ]

    def __str__(self) -> str:
        return self.message_id

    @property
    def message_id(self) -> str:
        return f"msg_{self.id.hex}"


# Registered rather than declared in Meta (see audit_stream.webhooks.models).
pgtrigger.register(
    ordering.UnparkNext(name="unpark_next", table="audit_stream_sinkmessage", subscriber="sink_id")
)(SinkMessage)
