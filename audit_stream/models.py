"""Models: the shared ``Context`` table and the abstract ``Event`` every event model extends."""

from __future__ import annotations

import uuid

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models.functions import Now

__all__ = ["Context", "Event", "create_event_model"]


class Context(models.Model):
    """Who and why: one row per :func:`audit_stream.context`, shared by its events.

    Written by the triggers (once per statement, never per row) the first time
    an event is recorded inside the context, and updated when its metadata grows.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())
    metadata = models.JSONField(default=dict, encoder=DjangoJSONEncoder)

    class Meta:
        db_table = "audit_stream_context"
        verbose_name = "context"

    def __str__(self) -> str:
        return str(self.id)


class Event(models.Model):
    """The abstract base of every event model.

    Concrete event models are made by :func:`audit_stream.track`,
    :func:`audit_stream.get_event_model` or :func:`create_event_model`. Besides
    the tracked fields they carry:

    * ``pgh_id``: a bigint primary key, increasing in insertion order;
    * ``pgh_created_at``: the time of the transaction that wrote the event;
    * ``pgh_label``: the event label;
    * ``pgh_obj``: the tracked object (no database constraint: history
      outlives the object);
    * ``pgh_context``: the :class:`Context`, if the event happened inside one.
    """

    pgh_id = models.BigAutoField(primary_key=True)
    pgh_created_at = models.DateTimeField(db_default=Now(), editable=False)
    pgh_label = models.TextField(help_text="The event label.")

    # Set by the factory on concrete event models.
    pgh_tracked_model: type[models.Model] | None = None
    pgh_events: tuple = ()

    class Meta:
        abstract = True

    @classmethod
    def _pgh_setup(cls) -> None:
        from audit_stream import tracking

        tracking._setup_event_model(cls)


from audit_stream.tracking import create_event_model  # noqa: E402
