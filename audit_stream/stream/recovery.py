"""Recovering a fold checkpoint restored from another cluster, exactly, before anything else is folded.

A checkpoint's snapshot holds its cluster's transaction ids; restored onto
another cluster it is *foreign* (:mod:`audit_stream.stream.checkpoint`). The
fold recovers each foreign lane in one REPEATABLE READ transaction: the
events the old cluster had not folded (:data:`checkpoint.RECOVERY_INTERVAL`)
and the lane's new snapshot are read in one snapshot, so an event committed
meanwhile is left to the next fold, and none is folded twice or skipped.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import OperationalError, connections, transaction

from audit_stream.sinks import messages as sink_messages
from audit_stream.stream import batch, checkpoint, lanes
from audit_stream.webhooks import messages

__all__ = ["Record", "is_foreign", "recover"]

#: Told of each committed step of a fold: (events folded, webhook endpoints owed messages).
Record = Callable[[int, set[int]], object]


def is_foreign(event_table: str, lane: int, using: str) -> bool:
    """Whether lane ``lane`` of ``event_table``'s checkpoint is of another cluster (not recovered yet)."""
    with connections[using].cursor() as cursor:
        return checkpoint.is_foreign(cursor, event_table, lane)


def recover(model, using: str, model_names, record: Record, lane: int = 0) -> bool:
    """Recover lane ``lane`` of ``model``'s checkpoint restored from another cluster.

    False if another fold holds it (it recovers it). ``record`` is told what
    was folded once the transaction has committed.
    """
    table = model._meta.db_table
    connection = connections[using]
    if connection.in_atomic_block:
        raise RuntimeError(
            "Recovering a restored checkpoint needs a transaction of its own:"
            " fold outside transaction.atomic()."
        )
    folded, endpoints = 0, set()
    try:
        with transaction.atomic(using=using), connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            found = checkpoint.claim(cursor, table, lane)
            if found is None:
                return False
            if found.foreign:
                params = {
                    **checkpoint.recovery_params(cursor, found),
                    "limit": None,
                    **lanes.params(found.lane, found.lanes),
                }
                in_interval = checkpoint.RECOVERY_INTERVAL
                cursor.execute(*batch.sql(model, connection, found.names, in_interval, params, model_names))
                changes = [change_id for change_id, _, _ in cursor.fetchall()]
                endpoints = messages.record(cursor, changes)
                sink_messages.record(cursor, changes)
                folded = len(changes)
                quoted = connection.ops.quote_name(table)
                checkpoint.recovered(cursor, table, quoted, found.floor, folded, lane)
    except OperationalError as exc:  # the checkpoint moved after our snapshot: another fold has it
        if getattr(exc.__cause__, "sqlstate", None) == "40001":
            return False
        raise
    record(folded, endpoints)
    return True
