"""Contexts that nothing references any more: garbage once an hour old.

A context is referred to by changes (the feed's ``context_id`` index), by
folded events (their count per context, :mod:`~audit_stream.retention.references`)
and by events not folded yet (each table's unfolded events, a range of its
``pgh_xid`` index): no event table is read whole, whatever its size. A table
never folded, or whose checkpoint came from another cluster, has its
context ids read whole, as all of them may be unfolded.

The dry run counts the same SELECT the run deletes by, on the history the
same run would leave: it deletes no event or change, so each of its deletes
notes what it would take away (:mod:`~audit_stream.retention.foresight`), and
its SELECT reads each count less the folded events noted, skips the events
noted that no count holds, and takes a context all of whose changes are
noted as one with none (:data:`_FORESEEN_CANDIDATES`).
"""

from __future__ import annotations

from datetime import timedelta

from audit_stream import registry
from audit_stream.retention import batches, foresight, references
from audit_stream.stream import checkpoint, unfolded

__all__ = ["candidates", "prune_contexts"]

_GRACE = timedelta(hours=1)

# Old enough not to belong to a request still under way, and referred to by no
# folded event (no count above 0), no change and no unfolded event ({unfolded}:
# each table's context ids that may be unfolded, see _unfolded_contexts).
_CANDIDATES = f"""
WITH unfolded_contexts AS MATERIALIZED (
    SELECT DISTINCT u.context_id FROM ({{unfolded}}) AS u (context_id) WHERE u.context_id IS NOT NULL
)
SELECT ctx.id FROM audit_stream_context AS ctx
WHERE ctx.updated_at < %(grace)s
  AND NOT EXISTS (SELECT 1 FROM {references.COUNT_TABLE} AS n WHERE n.context_id = ctx.id AND n.events > 0)
  AND NOT EXISTS (SELECT 1 FROM audit_stream_change AS c WHERE c.context_id = ctx.id)
  AND NOT EXISTS (SELECT 1 FROM unfolded_contexts AS u WHERE u.context_id = ctx.id)
"""

# A dry run's: the same, on what the run's deletes would leave
# (audit_stream.retention.foresight, f): each count less the folded events
# they would subtract, and the contexts with no change as before, plus those
# ({freed}) all of whose changes would go (a join of the few contexts some of
# whose changes would go to the (context_id, id) index; the two sets are apart).
_FORESEEN_CANDIDATES = f"""
WITH unfolded_contexts AS MATERIALIZED (
    SELECT DISTINCT u.context_id FROM ({{unfolded}}) AS u (context_id) WHERE u.context_id IS NOT NULL
), freed AS MATERIALIZED (
    SELECT f.context_id FROM {foresight.FORESEEN} AS f
    JOIN audit_stream_change AS c ON c.context_id = f.context_id
    WHERE f.changes > 0
    GROUP BY f.context_id, f.changes HAVING count(*) <= f.changes
), candidates AS (
    SELECT ctx.id FROM audit_stream_context AS ctx
    WHERE NOT EXISTS (SELECT 1 FROM audit_stream_change AS c WHERE c.context_id = ctx.id)
    UNION ALL
    SELECT ctx.id FROM audit_stream_context AS ctx JOIN freed ON freed.context_id = ctx.id
)
SELECT ctx.id FROM candidates JOIN audit_stream_context AS ctx ON ctx.id = candidates.id
LEFT JOIN {foresight.FORESEEN} AS f ON f.context_id = ctx.id
WHERE ctx.updated_at < %(grace)s
  AND NOT EXISTS (
    SELECT 1 FROM {references.COUNT_TABLE} AS n
    WHERE n.context_id = ctx.id AND n.events + coalesce(f.events, 0) > 0
  )
  AND NOT EXISTS (SELECT 1 FROM unfolded_contexts AS u WHERE u.context_id = ctx.id)
"""

# updated_at again in the DELETE itself: rechecked on the row's latest version if a
# writer attached the context meanwhile (see triggers.attach_context_function). The
# counts of the contexts deleted go with them (none is above 0).
_DELETE = f"""
WITH gone AS (
    DELETE FROM audit_stream_context WHERE id IN ({{candidates}}) AND updated_at < %(grace)s
    RETURNING id
), uncounted AS (
    DELETE FROM {references.COUNT_TABLE} AS n USING gone WHERE n.context_id = gone.id
)
SELECT count(*) FROM gone
"""

# One table's events that may be unfolded, in its checkpoint (%(done_N)s, %(floor_N)s):
# its two parts apart, each a range of the pgh_xid index (an OR would read the table).
_UNFOLDED_EVENTS = "SELECT e.pgh_context_id FROM {table} AS e WHERE {part}{kept}"

# A table never folded (or folded on another cluster): every event's context.
_EVERY_EVENT = "SELECT DISTINCT e.pgh_context_id FROM {table} AS e WHERE TRUE{kept}"

# {kept} in a dry run: not one of the events the run would delete that no count
# holds (%(table_N)s, the table's name), foresight.FORESEEN_EVENTS.
_KEPT = f"""
  AND NOT EXISTS (
    SELECT 1 FROM {foresight.FORESEEN_EVENTS} AS g WHERE g.event_table = %(table_{{i}})s AND g.id = e.pgh_id
  )"""


def prune_contexts(connection, now, batch_size, dry_run, *, foreseen: bool = False) -> int:
    """Delete (or, in a dry run, count) the unreferenced contexts older than the grace period.

    ``foreseen`` (a dry run of :func:`audit_stream.retention.prune`): less the
    references its event and change deletes noted (:mod:`~audit_stream.retention.foresight`).
    """
    params = {"grace": now - _GRACE}
    with connection.cursor() as cursor:
        sql = candidates(connection, cursor, params, foreseen=foreseen)
        if foreseen:  # its size for the planner (a temporary table is never analysed on its own)
            cursor.execute(f"ANALYZE {foresight.FORESEEN}")
        if dry_run:
            with batches.choosing(cursor):
                cursor.execute(f"SELECT count(*) FROM ({sql}) AS candidates", params)
                return cursor.fetchone()[0]
        cursor.execute(_DELETE.format(candidates=sql), params)
        return cursor.fetchone()[0]


def candidates(connection, cursor, params: dict, *, foreseen: bool = False) -> str:
    """The SELECT of the contexts nothing refers to; adds each table's checkpoint to ``params``.

    ``foreseen``: nothing but what a dry run's deletes would leave (see :func:`prune_contexts`).
    """
    tables = [table for table, model in registry.event_models.items() if model._pgh_has_context]
    tables = sorted({*tables, registry.ROW_LOG_TABLE})
    parts = []
    for i, (table, (done, floor, foreign)) in enumerate(checkpoint.folded_tables(cursor, tables).items()):
        quoted = connection.ops.quote_name(table)
        kept = ""
        if foreseen:
            params[f"table_{i}"], kept = table, _KEPT.format(i=i)
        if done is None or foreign:
            parts.append(_EVERY_EVENT.format(table=quoted, kept=kept))
            continue
        params[f"done_{i}"], params[f"floor_{i}"] = done, floor
        for part in (unfolded.NEW, unfolded.IN_PROGRESS):
            part = part.replace("%(done)s", f"%(done_{i})s").replace("%(floor)s", f"%(floor_{i})s")
            parts.append(_UNFOLDED_EVENTS.format(table=quoted, part=part, kept=kept))
    unfolded_sql = "\nUNION ALL\n".join(parts) or "SELECT NULL::uuid"
    return (_FORESEEN_CANDIDATES if foreseen else _CANDIDATES).format(unfolded=unfolded_sql)
