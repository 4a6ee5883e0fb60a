"""The abstract ``Event`` every event model extends, and the ``Context`` its events share.

Apart from :mod:`audit_stream.models` (which exports both) so that the event
model factory (:mod:`audit_stream.tracking`, :mod:`audit_stream.m2m`) imports
them without importing the models, which import the factory. (It imports them
inside its functions: ``audit_stream`` itself imports the factory before
Django's app registry is ready, when no model may be defined.) A concrete
event model is set up (its triggers registered) when Django prepares its
class: ``audit_stream.apps`` hands it to :func:`audit_stream.tracking.setup_event_model`.
"""

from __future__ import annotations

import uuid

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Func
from django.db.models.fields.json import KeyTransform
from django.db.models.functions import Cast, Now
from django.utils.deconstruct import deconstructible

from audit_stream.exact import ExactDecoder

__all__ = ["Context", "Event", "TransactionNow", "context_field"]


@deconstructible(path="audit_stream.models.TransactionNow")  # as migrations have written it
class TransactionNow(Func):
    """``CURRENT_TIMESTAMP`` (``now()``): the start time of the current transaction.

    The same for every statement of a transaction, as django-pghistory's
    ``pgh_created_at``. Django's ``Now()`` is ``STATEMENT_TIMESTAMP()`` on
    PostgreSQL, which differs between the statements of one transaction.
    """

    template = "CURRENT_TIMESTAMP"
    output_field = models.DateTimeField()


_CURRENT_XID = Cast(Cast(Func(function="pg_current_xact_id"), models.TextField()), models.BigIntegerField())


class Context(models.Model):
    """Who and why: one row per :func:`audit_stream.context`, shared by its events.

    Written by the triggers (once per statement, never per row) the first time
    an event is recorded inside the context, and updated when its metadata grows.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())
    metadata = models.JSONField(default=dict, encoder=DjangoJSONEncoder, decoder=ExactDecoder)

    class Meta:
        db_table = "audit_stream_context"
        verbose_name = "context"
        indexes = [
            # Change.objects.by_user() and the dashboard's user filter.
            models.Index(KeyTransform("user", "metadata"), name="audit_stream_context_user"),
        ]

    def __str__(self) -> str:
        return str(self.id)


def context_field() -> models.ForeignKey:
    """The ``pgh_context`` field of an event model (and of a many-to-many event model).

    No database constraint (retention prunes contexts on its own schedule, and
    the triggers write events and their context in one statement) and no
    index of its own.
    """
    return models.ForeignKey(
        Context,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )


class Event(models.Model):
    """The abstract base of every event model.

    Concrete event models are made by :func:`audit_stream.track`,
    :func:`audit_stream.get_event_model` or :func:`create_event_model`. Besides
    the tracked fields they carry:

    * ``pgh_id``: a bigint primary key, increasing in insertion order;
    * ``pgh_created_at``: the start time of the transaction that wrote the
      event (``now()``), the same for all its events; not its commit time;
    * ``pgh_label``: the event label;
    * ``pgh_xid``: the id of the writing transaction (for the stream);
    * ``pgh_obj``: the tracked object (no database constraint: history
      outlives the object);
    * ``pgh_context``: the :class:`Context`, if the event happened inside one.
    """

    pgh_id = models.BigAutoField(primary_key=True)
    pgh_created_at = models.DateTimeField(db_default=TransactionNow(), editable=False)
    pgh_label = models.TextField(help_text="The event label.")
    # The writing transaction (xid8 as bigint), for the stream's fold. Set by
    # the triggers once per statement; the default serves create_event().
    pgh_xid = models.BigIntegerField(db_default=_CURRENT_XID, editable=False)

    # Set by the factory on concrete event models.
    pgh_tracked_model: type[models.Model] | None = None
    pgh_events: tuple = ()
    pgh_mask: tuple = ()  # track(mask=...): fields shown masked outside the event table

    class Meta:
        abstract = True
