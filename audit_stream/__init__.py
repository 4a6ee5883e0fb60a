"""audit_stream: trigger-based model history for Django on PostgreSQL, with a change stream.

The public API keeps django-pghistory's names::

    import audit_stream

    @audit_stream.track(audit_stream.Snapshot(), audit_stream.BeforeDelete())
    class Product(models.Model):
        ...

    with audit_stream.context(user=request.user.pk):
        product.save()
"""

from audit_stream.context import context
from audit_stream.events import (
    AfterInsert,
    AfterInsertOrUpdate,
    AfterUpdate,
    BeforeDelete,
    BeforeUpdate,
    DatabaseEvent,
    Event,
    Snapshot,
)
from audit_stream.history import as_of
from audit_stream.history.undo import UndoError, undo, undo_transaction
from audit_stream.tracking import create_event, get_event_model, track

__version__ = "0.1.0"

__all__ = [
    "AfterInsert",
    "AfterInsertOrUpdate",
    "AfterUpdate",
    "BeforeDelete",
    "BeforeUpdate",
    "DatabaseEvent",
    "Event",
    "Snapshot",
    "UndoError",
    "as_of",
    "context",
    "create_event",
    "get_event_model",
    "track",
    "undo",
    "undo_transaction",
]
