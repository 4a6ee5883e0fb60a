"""Retention of event tables and the row log: folded events only, by age, by rank per object, or both."""

from __future__ import annotations

from audit_stream import partitions
from audit_stream.retention import batches, counts, drops, foresight, references
from audit_stream.retention.policies import Policy, row_log_model
from audit_stream.stream import unfolded

__all__ = ["candidates", "prune_events"]

# An event may go once the stream has folded it: its transaction is visible in
# the table's checkpoint snapshot, or it is a restored event up to its `floor`
# (audit_stream.stream.unfolded); `force` lets unfolded ones go too. `above`:
# past the partitions dropped whole (counted apart).
_MAY_GO = """(%(force)s OR (%(done)s::pg_snapshot IS NOT NULL AND NOT {unfolded}))
  AND (%(above)s::bigint IS NULL OR {pk} >= %(above)s)""".replace("{unfolded}", unfolded.UNFOLDED)

# With keep_last: each object's events ranked newest first ({rows}: those of
# the objects that may have more than keep_last, see _RANKED_ROWS).
_RANKED_CANDIDATES = f"""
INSERT INTO {batches.DOOMED} (id)
SELECT pgh_id FROM (
    SELECT e.pgh_id, e.pgh_created_at, e.pgh_xid,
           row_number() OVER (PARTITION BY {{object}} ORDER BY e.pgh_id DESC) AS newest
    FROM ({{rows}}) AS e
) AS e
WHERE (%(cutoff)s::timestamptz IS NULL OR pgh_created_at < %(cutoff)s)
  AND (%(keep_last)s::int IS NULL OR newest > %(keep_last)s)
  AND {_MAY_GO.replace("{pk}", "pgh_id")}
"""

# Without keep_last, no ranking: the old enough, folded events.
_CANDIDATES_BY_AGE = f"""
INSERT INTO {batches.DOOMED} (id)
SELECT e.pgh_id FROM {{table}} AS e
WHERE e.pgh_created_at < %(cutoff)s
  AND {_MAY_GO.replace("{pk}", "e.pgh_id")}
"""

# The rows ranked: only the objects that may have more than keep_last events
# (counts.CROWDED_OBJECTS, a superset: an object missing there would keep
# events its policy lets go), each object's read through the pgh_obj index
# (a lateral subquery the planner may not flatten, OFFSET 0: from an estimate
# of the unfolded events it would hash-join the whole table). Events without
# an object are one object, as in the ranking's PARTITION BY (a branch of
# their own: an OR would defeat the index).
_RANKED_ROWS = """
SELECT e.* FROM ({crowded}) AS o (id)
CROSS JOIN LATERAL (SELECT * FROM {table} AS e WHERE e.pgh_obj_id = o.id OFFSET 0) AS e
UNION ALL
SELECT * FROM {table} AS e WHERE e.pgh_obj_id IS NULL
"""

# A table never folded has no checkpoint and so no counts (`force` alone
# prunes it): its objects are found by grouping the whole table.
_GROUPED_OBJECTS = (
    "SELECT e.pgh_obj_id FROM {table} AS e GROUP BY e.pgh_obj_id HAVING count(*) > %(keep_last)s"
)


def candidates(connection, model, policy: Policy, *, counted: bool = True) -> str:
    """The candidates SQL of an event table: ranked per object with ``keep_last``, else by age alone.

    ``counted``: the objects ranked are found from :mod:`~audit_stream.retention.counts`
    (else by grouping the table, for a table never folded).
    """
    table = connection.ops.quote_name(model._meta.db_table)
    if policy.keep_last is None:
        return _CANDIDATES_BY_AGE.format(table=table)
    obj = _object_key(model)
    if obj == "NULL::int":  # one object: every event is ranked
        rows = f"SELECT * FROM {table} AS e"
    else:
        crowded = counts.CROWDED_OBJECTS if counted else _GROUPED_OBJECTS
        crowded = crowded.replace("{object_type}", _object_type(connection, model._meta.db_table))
        rows = _RANKED_ROWS.format(table=table, crowded=crowded.replace("{table}", table))
    return _RANKED_CANDIDATES.format(object=obj, rows=rows)


def _object_key(model) -> str:
    """What identifies one object in ``model``'s table (for ``keep_last``)."""
    if model is row_log_model():
        return "e.logged_table, e.pgh_obj_id"
    return "e.pgh_obj_id" if model._pgh_has_obj else "NULL::int"


def _object_type(connection, table: str) -> str:
    """The SQL type of ``table``'s ``pgh_obj_id`` (the counts hold object ids as text)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = to_regclass(quote_ident(%s)) AND attname = 'pgh_obj_id'",
            [table],
        )
        return cursor.fetchone()[0]


def checkpoint(cursor, table: str) -> tuple[str | None, int, bool]:
    """The table's folded snapshot, restored floor, and whether it is of another cluster.

    For a table folded in several lanes: what every lane has folded (the
    earliest lane's snapshot, the lowest floor), so no lane's unfolded event is pruned.
    """
    from audit_stream.stream import checkpoint

    return checkpoint.folded(cursor, table)


def _former_names(cursor, table: str) -> list[str]:
    """The names ``table`` had before renames: its changes (and their counts) still carry them."""
    cursor.execute(
        "SELECT coalesce(max(former_names), '{}') FROM audit_stream_checkpoint WHERE event_table = %s",
        [table],
    )
    return list(cursor.fetchone()[0])


def prune_events(connection, model, policy, cutoff, batch_size, dry_run, force, progress) -> tuple[str, int]:
    """Prune one event table (or the row log) by ``policy``: (table, events deleted or counted)."""
    table = model._meta.db_table
    with connection.cursor() as cursor:
        done, floor, foreign = checkpoint(cursor, table)
        if foreign and not force:
            raise ValueError(
                "its fold checkpoint was restored from another cluster and is not recovered yet, so what"
                " is folded is unknown: nothing pruned. Let the worker fold (it recovers the checkpoint),"
                " or run fold_all(), then prune again."
            )
        dropped, above = 0, None
        if cutoff is not None and policy.keep_last is None and partitions.is_partitioned(cursor, table):
            if dry_run:
                drops.foresee_leftovers(connection, table, contexts=_has_context(model))
            else:
                drops.drop_leftovers(connection, table, contexts=_has_context(model))
            parts = partitions.droppable(cursor, table, cutoff, done, floor)
            dropped = drops.drop_partitions(
                connection, table, parts, dry_run, progress, contexts=_has_context(model)
            )
            above = parts[-1].upper if parts else None  # counted above (a dry run leaves them in place)
        params = {
            "cutoff": cutoff,
            "keep_last": policy.keep_last,
            "force": force,
            "done": done,
            "floor": floor,
            "above": above,
            "count_table": table,
            "former_tables": _former_names(cursor, table),
        }
        # Counts say nothing of a table never folded; only `force` prunes one.
        sql = candidates(connection, model, policy, counted=done is not None or not force)
        if dry_run and _has_context(model):  # counted, and noted for the contexts step
            total = _foresee(cursor, table, sql, params, None if foreign else done, floor)
        else:
            total = batches.fill(cursor, sql, params, count_only=dry_run)
    if dry_run:
        return table, dropped + total
    deleted = batches.drain(
        connection, table, "pgh_id", total, batch_size, progress, event_table=True,
        sql=_delete_batch(connection, model, policy, force),
        params={"count_table": table, "done": None if foreign else done, "floor": floor},
    )  # fmt: skip
    return table, dropped + deleted


def _foresee(cursor, table: str, sql: str, params: dict, done, floor) -> int:
    """A dry run's count of the candidates ``sql``, each noted as the run's batch would take it
    off its context's count, :func:`_delete_batch` (:mod:`~audit_stream.retention.foresight`)."""
    with batches.choosing(cursor):
        return foresight.note_events(cursor, table, batches.select_of(sql), params, done, floor)


def _delete_batch(connection, model, policy: Policy, force: bool) -> str | None:
    """The batch statement of an event table: the default, or one that subtracts from the counts.

    The per-object counts lose the events deleted under ``keep_last``, which
    reads them (by age alone they are not subtracted: one count row updated
    per object per batch tripled the WAL of a prune by age and halved its
    speed, BENCHMARKS.md; nor with ``force``: its unfolded events were never
    counted). The per-context counts always lose the deleted events the fold
    counted (:data:`~audit_stream.retention.references.SUBTRACT`): contexts are
    pruned by them whatever the policy. So do the counts of a partitioned
    table's partitions (:data:`~audit_stream.partitions.counts.SUBTRACT`),
    which the partitions' drops take off the contexts' counts in their turn.
    """
    returning, counted, after = ["t.pgh_id"], [], "TRUE"
    if policy.keep_last is not None and not force and _object_key(model) != "NULL::int":
        returning.append("t.pgh_obj_id")
        counted.append(counts.SUBTRACT)
        after = counts.AFTER_SUBTRACT  # objects locked first, as the fold locks them
    with connection.cursor() as cursor:
        partitioned = partitions.is_partitioned(cursor, model._meta.db_table)
    ctes, columns = references.subtractions(
        "t", has_context=_has_context(model), partitioned=partitioned, after=after
    )
    counted.extend(ctes)
    returning.extend(columns)
    if not counted:
        return None
    return batches.COUNTED_DELETE_BATCH.format(
        table=connection.ops.quote_name(model._meta.db_table),
        doomed=batches.DOOMED,
        returning=", ".join(returning),
        counted="".join(f",\n{cte.replace('{gone}', 'gone')}" for cte in counted),
    )


def _has_context(model) -> bool:
    """Whether ``model``'s table has a context column (the row log always has)."""
    return model is row_log_model() or getattr(model, "_pgh_has_context", False)
