"""Per-context counts (``ContextCount``): the contexts no folded event refers to, read without events.

A context may go once nothing refers to it: no change, no event. Event
tables have no index on ``pgh_context_id`` (one would cost every write), so
checking the old contexts against each table's context ids read every event
table whole (at 1,000,000 events, most of a dry run). Instead a
statement-level trigger on ``audit_stream_change`` keeps, per context, the
number of its folded events (each change written is one event folded, and
carries its event's context), set-based, one statement per fold batch;
retention and erasure subtract the folded events they delete, in the same
statement as the delete. The other references are read where they are
bounded:

* changes: the feed's index on ``(context_id, id)`` (migration 0037);
* events not folded yet (no change, so no count): from the fold's own
  definition of unfolded (:mod:`audit_stream.stream.unfolded`, a range of
  each table's ``pgh_xid`` index), for the event tables and the row log;
* a table never folded, or whose checkpoint came from another cluster: its
  context ids, read whole as before (what is folded there is unknown).

Retention's batches (``--force`` ones too), its partition drops and erasure
subtract the events they delete that the table's checkpoint says are folded
(read before the delete; the fold counted them in the transaction that
moved it). A count may only err upwards: an event folded meanwhile, or
deleted while the checkpoint is another cluster's, is not subtracted; an
event folded twice (a recovery) is counted twice; the backfill counts
unfolded events too (counted again when folded). Such a context is kept. A
count too low would delete a context still referred to: nothing subtracts
an event that was not counted.
"""

from __future__ import annotations

from audit_stream import triggers
from audit_stream.partitions import counts as partition_counts
from audit_stream.stream import unfolded

__all__ = ["COUNT_TABLE", "SUBTRACT", "backfill", "install_sql", "subtractions", "uninstall_sql"]

COUNT_TABLE = "audit_stream_context_count"
_FUNCTION = "_audit_stream_count_references"
# Named to fire after the per-object counts' trigger (same event: alphabetical order),
# so a fold locks count rows as retention's batches do: objects, then contexts.
_INSERTED = "audit_stream_refs_inserted"


def install_sql() -> str:
    """The trigger function and the statement-level trigger on ``audit_stream_change``'s inserts.

    One upsert per statement, grouped by context and in key order (so two
    statements never deadlock). A change deleted subtracts nothing: changes
    are checked through their own index, and its event is subtracted when the
    event goes.
    """
    function, counts = triggers.qualified(_FUNCTION), triggers.qualified(COUNT_TABLE)
    return f"""
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = {triggers.search_path()}
AS $$
BEGIN
    INSERT INTO {counts} AS n (context_id, events)
    SELECT r.context_id, count(*)
    FROM _audit_stream_rows AS r
    WHERE r.context_id IS NOT NULL
    GROUP BY r.context_id
    ORDER BY r.context_id
    ON CONFLICT (context_id) DO UPDATE SET events = n.events + excluded.events;
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION {function}() FROM PUBLIC;
{triggers.change_trigger_sql(_INSERTED, function)}"""


def uninstall_sql() -> str:
    return triggers.drop_change_trigger_sql(triggers.qualified(_FUNCTION), _INSERTED)


# The counts of the history there is already (migrate, once): every event of
# each table with a context column, folded or not (an unfolded one is counted
# again when folded: an error upwards).
_BACKFILL = f"""
INSERT INTO {COUNT_TABLE} AS n (context_id, events)
SELECT e.pgh_context_id, count(*)
FROM {{table}} AS e WHERE e.pgh_context_id IS NOT NULL
GROUP BY e.pgh_context_id
ON CONFLICT (context_id) DO UPDATE SET events = n.events + excluded.events
"""


def backfill(connection) -> None:
    """Count the events already there (the migration that adds the counts runs it)."""
    from audit_stream import registry

    tables = [table for table, model in registry.event_models.items() if model._pgh_has_context]
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {COUNT_TABLE}")
        for table in sorted({*tables, registry.ROW_LOG_TABLE}):
            cursor.execute("SELECT to_regclass(quote_ident(%s)) IS NOT NULL", [table])
            if cursor.fetchone()[0]:
                cursor.execute(_BACKFILL.format(table=connection.ops.quote_name(table)))


# A CTE that subtracts, from their contexts' counts, the events of {gone} (a
# CTE of deleted event rows, read as `e`, with pgh_id, pgh_xid and
# pgh_context_id) that the fold has counted: those folded in the table's
# checkpoint (%(done)s, %(floor)s; none when %(done)s is NULL). An unfolded
# one was never counted: subtracting it would leave a count too low.
#
# {after}: TRUE, or, beside the per-object counts' CTE, counts.AFTER_SUBTRACT:
# the objects' rows are locked before the contexts', as the fold's triggers lock
# them (objects, then contexts), so a batch and a fold never deadlock. Without
# it PostgreSQL runs the later of two unread CTEs first.
SUBTRACT = f"""counted_contexts AS (
    INSERT INTO {COUNT_TABLE} AS n (context_id, events)
    SELECT e.pgh_context_id, -count(*)
    FROM {{gone}} AS e
    WHERE e.pgh_context_id IS NOT NULL AND {{after}}
      AND %(done)s::pg_snapshot IS NOT NULL AND NOT {unfolded.UNFOLDED}
    GROUP BY e.pgh_context_id
    ORDER BY e.pgh_context_id
    ON CONFLICT (context_id) DO UPDATE SET events = n.events + excluded.events
)"""


def subtractions(
    alias: str, *, has_context: bool, partitioned: bool, after: str = "TRUE"
) -> tuple[list[str], list[str]]:
    """What a deletion of events takes off the counts that stay: its CTEs, and what they read of each event.

    The contexts' counts lose the deleted events the fold counted (:data:`SUBTRACT`, with
    ``after``), and in a partitioned table so do their partitions' counts
    (:data:`audit_stream.partitions.counts.SUBTRACT`). Returns those CTEs (each reading ``{gone}``)
    and the columns of ``alias``, the deleted rows, that the deletion's ``RETURNING`` must give
    them; both empty when there is nothing to count.
    """
    ctes = [SUBTRACT.replace("{after}", after)] if has_context else []
    if partitioned:
        ctes.append(partition_counts.SUBTRACT)
    if not ctes:
        return [], []
    context = f"{alias}.pgh_context_id" if has_context else "NULL::uuid AS pgh_context_id"
    return ctes, [f"{alias}.pgh_xid", context, *([f"{alias}.tableoid"] if partitioned else [])]
