"""Laying a table out in its configured number of fold lanes, and changing that number safely.

The number of lanes a table is folded in is recorded on its checkpoint rows
(:mod:`audit_stream.stream.lanes`). A fold first lays the table out
(:func:`lay_out`): a table never folded gets the rows of its configured
lanes; a table whose rows record another number than ``FOLD_LANES`` gives is
re-laned (:func:`relane`) in one transaction that folds every lane up to one
snapshot and replaces the rows by the new lanes, all starting there.
"""

from __future__ import annotations

from django.db import connections, transaction

from audit_stream.sinks import messages as sink_messages
from audit_stream.stream import batch, checkpoint, interval, lanes, recovery
from audit_stream.webhooks import messages

__all__ = ["lay_out", "relane"]


def lay_out(model, using: str, model_names, record: recovery.Record) -> int | None:
    """The number of lanes to fold ``model``'s table in, after re-laning it if the setting changed.

    A table never folded gets the checkpoint rows of its configured lanes. If
    its rows record another number, each lane restored from another cluster is
    recovered first (under the recorded lanes), then the table is re-laned.
    None: another fold holds a lane meanwhile (try again later). ``record`` is
    told what each committed step folded.
    """
    table = model._meta.db_table
    wanted = lanes.configured(table)
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        recorded = checkpoint.ensure(cursor, table, wanted)
    if recorded == wanted:
        return recorded
    for lane in range(recorded):
        if recovery.is_foreign(table, lane, using) and not recovery.recover(
            model, using, model_names, record, lane
        ):
            return None
    return relane(model, using, model_names, wanted, record)


def relane(model, using: str, model_names, wanted: int, record: recovery.Record) -> int | None:
    """Fold ``model``'s table in ``wanted`` lanes from now on; None if another fold holds one of its lanes.

    One transaction: every lane's checkpoint is locked; one snapshot is taken,
    later than every lane's; each lane folds the rest of its half-folded
    interval (if any) and then every event of its own up to that snapshot, as
    it always does (hashing with the old number of lanes); then the rows are
    replaced by ``wanted`` lanes that all start at that snapshot. Whatever each
    lane had folded, every event is folded once, by its old lane before the
    change or by its new one after it.
    """
    table = model._meta.db_table
    connection = connections[using]
    with transaction.atomic(using=using), connection.cursor() as cursor:
        old = checkpoint.claim_all(cursor, table)
        if old is None or any(claim.foreign for claim in old):
            return None  # a lane is busy, or was restored from another cluster meanwhile
        if old[0].lanes == wanted:
            return wanted  # another fold re-laned it meanwhile
        target, high = interval.take_target(cursor, connection, table)
        rows = []
        for claim in old:
            params = {
                "floor": claim.floor,
                "limit": None,
                "window_end": 2**63 - 1,  # the whole interval at once
                **lanes.params(claim.lane, claim.lanes),
            }
            done, names = claim.done, claim.names
            if claim.target is not None:  # the rest of a half-folded interval
                params.update(done=done, target=claim.target, position=claim.position)
                cursor.execute(*batch.sql(model, connection, names, batch.IN_BATCH, params, model_names))
                rows += cursor.fetchall()
                done = claim.target
            position = interval.first_position(cursor, connection, table, done, target, claim.floor)
            if position is not None:
                params.update(done=done, target=target, position=position)
                cursor.execute(*batch.sql(model, connection, names, batch.IN_BATCH, params, model_names))
                rows += cursor.fetchall()
        changes = [change_id for change_id, _, _ in rows]
        endpoints = messages.record(cursor, changes)
        sink_messages.record(cursor, changes)
        checkpoint.relaned(cursor, table, old, wanted, target, high, len(rows))
    record(len(rows), endpoints)
    return wanted
