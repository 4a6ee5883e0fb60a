"""Webhook endpoints, the messages owed to them, and every delivery attempt."""

from __future__ import annotations

import base64
import secrets
from datetime import timedelta

import pgtrigger
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Now
from django.utils import timezone

from audit_stream import ordering
from audit_stream.outbox import OwedMessage

__all__ = ["WebhookAttempt", "WebhookEndpoint", "WebhookHour", "WebhookMessage"]


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def mask(secret: str | None) -> str:
    """A secret as it may be shown after creation: its prefix and last 4 characters."""
    if not secret:
        return ""
    return f"whsec_…{secret[-4:]}"


class WebhookEndpoint(models.Model):
    """A subscriber: a URL that receives the changes matching its filters."""

    url = models.URLField(max_length=2000)
    description = models.TextField(blank=True, default="")
    secret = models.TextField(default=new_secret, editable=False)
    previous_secret = models.TextField(null=True, blank=True, editable=False)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
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
    rate_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="At most this many messages per second."
    )
    ordered = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Per object, in order: an object's next change is sent once the previous one was"
        " delivered or went dead (other objects keep flowing). Applies to changes recorded from now on.",
    )
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    # Delivery attempts ever made, by outcome: monotonic counters (retention prunes the
    # attempt rows, never these), exported as audit_stream_webhook_deliveries_total.
    attempts_succeeded = models.BigIntegerField(default=0, db_default=0, editable=False)
    attempts_failed = models.BigIntegerField(default=0, db_default=0, editable=False)
    failing_since = models.DateTimeField(null=True, blank=True, editable=False)
    disabled_reason = models.TextField(blank=True, default="", editable=False)
    disabled_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    # Claims start here, less ordering.FLOOR_MARGIN: no owed message is due before it but those
    # the sweep finds (audit_stream.ordering). NULL: not known yet, claims start at the first.
    due_floor = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        db_table = "audit_stream_webhookendpoint"
        verbose_name = "webhook endpoint"

    def __str__(self) -> str:
        return self.url

    def save(self, *args, **kwargs) -> None:
        # A bad URL never reaches the table, whoever saves it. Only a URL that is set
        # or changed is checked: a host that stops resolving later must not stop the
        # worker, an operator or the admin from disabling the endpoint or rotating its
        # secret (its deliveries are refused, and recorded as failed attempts, instead).
        update_fields = kwargs.get("update_fields")
        if update_fields is None or "url" in update_fields:
            self._check_url()
        self.filter_models = [m.lower() for m in self.filter_models]
        super().save(*args, **kwargs)
        self._stored_url = self.url

    def clean(self) -> None:
        self._check_url()
        self.filter_models = [m.lower() for m in self.filter_models]

    @classmethod
    def from_db(cls, db, field_names, values):
        endpoint = super().from_db(db, field_names, values)
        endpoint._stored_url = endpoint.__dict__.get("url")  # None when the field was deferred
        return endpoint

    @property
    def url_is_new(self) -> bool:
        """Whether ``url`` was set or changed since the endpoint was read (always true before it is saved)."""
        return self._state.adding or getattr(self, "_stored_url", None) != self.url

    def _check_url(self) -> None:
        from audit_stream.webhooks import safety

        if not self.url_is_new:
            return
        try:
            safety.check_url(self.url)
        except safety.UnsafeURL as exc:
            raise ValidationError({"url": str(exc)}) from None

    @property
    def masked_secret(self) -> str:
        return mask(self.secret)

    def signing_secrets(self) -> list[str]:
        """The secrets to sign with: the current one, and the previous one during its overlap."""
        found = [self.secret]
        if (
            self.previous_secret
            and self.previous_secret_expires_at
            and self.previous_secret_expires_at > timezone.now()
        ):
            found.append(self.previous_secret)
        return found

    def rotate_secret(self, overlap: timedelta = timedelta(hours=24)) -> str:
        """Replace the secret; sign with both for ``overlap``. Returns the new secret (shown once)."""
        self.previous_secret = self.secret
        self.previous_secret_expires_at = timezone.now() + overlap
        self.secret = new_secret()
        self.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at"])
        return self.secret

    def disable(self, reason: str) -> None:
        """Stop delivering to this endpoint, and say why."""
        self.is_active = False
        self.disabled_reason = reason
        self.disabled_at = timezone.now()
        self.save(update_fields=["is_active", "disabled_reason", "disabled_at"])

    def enable(self) -> None:
        self.is_active = True
        self.disabled_reason = ""
        self.disabled_at = None
        self.consecutive_failures = 0
        self.failing_since = None
        self.save(
            update_fields=[
                "is_active",
                "disabled_reason",
                "disabled_at",
                "consecutive_failures",
                "failing_since",
            ]
        )


class WebhookMessage(OwedMessage):
    """One change owed to one endpoint. ``webhook-id`` is ``msg_<id>``, stable across retries."""

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="messages")

    class Meta:
        db_table = "audit_stream_webhookmessage"
        verbose_name = "webhook message"
        indexes = [
            # The claim's "oldest due messages of an endpoint" (its ORDER BY), and an object's queue.
            *ordering.indexes("audit_stream_msg", "endpoint"),
            models.Index(fields=["endpoint", "status", "created_at"], name="audit_stream_msg_status"),
            # The admin's list of every message, newest first.
            models.Index(fields=["created_at", "id"], name="audit_stream_msg_created"),
        ]

    def __str__(self) -> str:
        return self.webhook_id

    @property
    def webhook_id(self) -> str:
        return f"msg_{self.id.hex}"


# Registered rather than declared in Meta: Meta.triggers exists only once pgtrigger is
# installed, and its absence must reach the system check (audit_stream.E007), not crash.
pgtrigger.register(
    ordering.UnparkNext(name="unpark_next", table="audit_stream_webhookmessage", subscriber="endpoint_id")
)(WebhookMessage)


class WebhookAttempt(models.Model):
    """One HTTP attempt to deliver a message: what happened, never the secret."""

    message = models.ForeignKey(WebhookMessage, on_delete=models.CASCADE, related_name="attempt_log")
    attempted_at = models.DateTimeField(db_default=Now())
    status_code = models.PositiveIntegerField(null=True)
    duration_ms = models.PositiveIntegerField(default=0)
    response_excerpt = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")
    succeeded = models.BooleanField(default=False)

    class Meta:
        db_table = "audit_stream_webhookattempt"
        verbose_name = "webhook attempt"
        ordering = ["attempted_at"]


class WebhookHour(models.Model):
    """Attempts to one endpoint in one hour, counted as they are recorded (audit_stream.webhooks.tally)."""

    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, db_constraint=False, db_index=False, related_name="+"
    )
    hour = models.DateTimeField()
    attempts = models.BigIntegerField(default=0)
    succeeded = models.BigIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    last_error_at = models.DateTimeField(null=True)

    class Meta:
        db_table = "audit_stream_webhookhour"
        verbose_name = "webhook attempts per hour"
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "hour"], name="audit_stream_webhookhour_key")
        ]


__all__ += ["mask", "new_secret"]
