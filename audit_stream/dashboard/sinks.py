"""The dashboard's figures for sinks: each sink's queue, counts and last error, like an endpoint's."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import DEFAULT_DB_ALIAS

from audit_stream.dashboard import endpoints
from audit_stream.dashboard.reading import rows
from audit_stream.sinks.models import Sink, SinkMessage

__all__ = ["SinkHealth", "recent_messages", "sink_health"]

_QUEUE_SQL = endpoints.queue_sql("audit_stream_sinkmessage", "sink_id", "audit_stream_sink")

# The newest messages of one sink (of one status, if given): a range of the
# (sink, status, created_at) index per status; the payload is not read.
_RECENT_SQL = """
SELECT id, event_type, status, attempts, next_attempt_at, last_error, created_at, delivered_at
FROM audit_stream_sinkmessage
WHERE sink_id = %(sink)s AND status = ANY(%(statuses)s)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s
"""


@dataclass
class SinkHealth:
    """One sink: its lifetime counts and last error (kept on its row by the delivery) and its queue."""

    sink: Sink
    pending: int = 0
    sending: int = 0
    dead: int = 0
    oldest_pending_at: datetime | None = None

    @property
    def health(self) -> str:
        """``disabled``, ``failing`` (its newest attempt failed), or ``ok``."""
        if not self.sink.is_active:
            return "disabled"
        failed, delivered = self.sink.last_error_at, self.sink.last_delivered_at
        return "failing" if failed and (delivered is None or failed > delivered) else "ok"

    @property
    def pending_display(self) -> str:
        return endpoints.capped(self.pending)

    @property
    def sending_display(self) -> str:
        return endpoints.capped(self.sending)

    @property
    def dead_display(self) -> str:
        return endpoints.capped(self.dead)

    @property
    def oldest_pending_age(self) -> str:
        return endpoints.age(self.oldest_pending_at)

    @property
    def last_error_age(self) -> str:
        return endpoints.age(self.sink.last_error_at)


def sink_health(sink_id: int | None = None, using: str = DEFAULT_DB_ALIAS) -> list[SinkHealth]:
    """Every sink (or one), oldest first, with its queue."""
    sinks = Sink.objects.using(using).order_by("id")
    if sink_id is not None:
        sinks = sinks.filter(pk=sink_id)
    found = {sink.pk: SinkHealth(sink) for sink in sinks}
    params = {
        "owner_id": sink_id,
        "cap": endpoints.QUEUE_CAP,
        "pending": SinkMessage.PENDING,
        "sending": SinkMessage.SENDING,
        "dead": SinkMessage.DEAD,
    }
    for pk, pending, sending, dead, oldest in rows(_QUEUE_SQL, params, using):
        if pk in found:
            found[pk].pending, found[pk].sending, found[pk].dead = pending, sending, dead
            found[pk].oldest_pending_at = oldest
    return list(found.values())


def recent_messages(
    sink_id: int, status: str | None = None, limit: int = 50, using: str = DEFAULT_DB_ALIAS
) -> list[SinkMessage]:
    """The newest ``limit`` messages of a sink, of one status or all."""
    statuses = [status] if status else [s for s, _ in SinkMessage.STATUSES]
    return list(
        SinkMessage.objects.using(using).raw(
            _RECENT_SQL, {"sink": sink_id, "statuses": statuses, "limit": limit}
        )
    )
