"""Retention of the change feed: by age and rank per object, never an object's latest change.

An object is one row of one table: for the row log, of one model (or
table). Its latest change stays whatever the policy: the fold diffs the
object's next event against it (and patches the row log's changed columns
onto it), so without it the next change would list every column as new.
Changes without an object (schema changes, event models without an object)
are one object per event table and model: the newest of them stays too.
"""

from __future__ import annotations

from audit_stream import partitions
from audit_stream.retention import batches, counts, foresight
from audit_stream.retention.policies import Policy

__all__ = ["CHANGE_CANDIDATES", "CHANGE_PARTITIONS_LOCK", "prune_changes"]

TABLE = "audit_stream_change"

# Each object's changes ranked newest first: the first `greatest(1, keep_last)`
# stay. Only objects that may have more changes than that are ranked
# (counts.CROWDED_CHANGE_OBJECTS, grouped by table and object id: a superset
# of the objects, so none is missed), each object's read through the
# audit_stream_change_prev index (a lateral subquery the planner may not
# flatten into a join of the whole feed, OFFSET 0); changes without an object
# all are (a branch of their own, through their partial index).
CHANGE_CANDIDATES = f"""
INSERT INTO {batches.DOOMED} (id)
SELECT id FROM (
    SELECT c.id, c.created_at,
           row_number() OVER (PARTITION BY c.event_table, c.model, c.object_id ORDER BY c.event_id DESC)
               AS newest
    FROM (
        SELECT c.* FROM ({counts.CROWDED_CHANGE_OBJECTS}) AS o
        CROSS JOIN LATERAL (
            SELECT * FROM audit_stream_change AS c
            WHERE c.event_table = o.event_table AND c.object_id = o.object_id
            OFFSET 0
        ) AS c
        UNION ALL
        SELECT * FROM audit_stream_change AS c WHERE c.object_id IS NULL
    ) AS c
) AS ranked
WHERE newest > greatest(1, %(keep_last)s::int)
  AND (%(cutoff)s::timestamptz IS NULL OR created_at < %(cutoff)s)
  AND (%(above)s::bigint IS NULL OR id >= %(above)s)
"""

# The same rule for one change `c`, as a condition (retention by partition
# copies the changes it selects): no later change of the same object, where
# the changes without an object of one event table and model are one object.
# Served by the audit_stream_change_prev index (event_table, object_id, event_id).
_LATEST_OF_ITS_OBJECT = """(
    c.object_id IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM audit_stream_change AS n
        WHERE n.event_table = c.event_table AND n.object_id = c.object_id AND n.model = c.model
          AND n.event_id > c.event_id)
    OR c.object_id IS NULL AND NOT EXISTS (
        SELECT 1 FROM audit_stream_change AS n
        WHERE n.event_table = c.event_table AND n.object_id IS NULL AND n.model = c.model
          AND n.event_id > c.event_id)
)"""

# Taken (for the session) while the oldest partitions of the change feed are
# replaced, and (for its transaction) by erasure: a change erased between the
# copy of the kept changes and the swap would come back.
CHANGE_PARTITIONS_LOCK = 0x61756469745F63  # "audit_c"


def prune_changes(connection, policy: Policy, cutoff, batch_size, dry_run, progress) -> tuple[str, int]:
    """Prune the change feed by ``policy``: aged partitions first (when partitioned), then in batches."""
    dropped, above = _drop_change_partitions(connection, policy, cutoff, dry_run, progress)
    with connection.cursor() as cursor:
        params = {"cutoff": cutoff, "keep_last": policy.keep_last, "above": above}
        if dry_run:  # counted, and noted for the contexts step (audit_stream.retention.foresight)
            with batches.choosing(cursor):
                return TABLE, dropped + foresight.note_changes(
                    cursor, batches.select_of(CHANGE_CANDIDATES), params
                )
        total = batches.fill(cursor, CHANGE_CANDIDATES, params)
    return TABLE, dropped + batches.drain(
        connection, TABLE, "id", total, batch_size, progress, event_table=False
    )


def _drop_change_partitions(
    connection, policy: Policy, cutoff, dry_run: bool, progress
) -> tuple[int, int | None]:
    """Retention by partition for a partitioned change feed: (changes dropped, first id above them).

    The lowest partitions whose changes were all written before ``cutoff``
    (:func:`partitions.aged`) are replaced by one partition holding the
    changes among them that are still the latest of their object
    (:func:`partitions.replace_lowest`): the fold diffs each object's next
    event against it. With ``keep_last`` above 1, nothing is dropped here
    (the batched delete keeps the last N of each object). The dropped changes
    are not taken from the per-object counts (an error upwards, see
    :mod:`~audit_stream.retention.counts`).
    """
    from audit_stream.models import Change

    if cutoff is None or (policy.keep_last or 1) > 1:
        return 0, None
    with connection.cursor() as cursor:
        if not partitions.is_partitioned(cursor, TABLE):
            return 0, None
        parts = partitions.aged(cursor, TABLE, cutoff)
        if not parts:
            return 0, None
        if dry_run:  # each partition's changes that would go, counted and noted for the contexts step
            doomed = f"NOT {_LATEST_OF_ITS_OBJECT}"
            counted = sum(foresight.note_change_partition(cursor, part.name, doomed) for part in parts)
            return counted, parts[-1].upper
        layout = partitions.layout_of(Change)
        partitions.drop_leftovers(connection, TABLE)  # of a prune interrupted after its swap
        cursor.execute("SELECT pg_advisory_lock(%s)", [CHANGE_PARTITIONS_LOCK])
        try:
            dropped, _ = partitions.replace_lowest(
                layout, parts, _LATEST_OF_ITS_OBJECT, using=connection.alias, lock_timeout="100ms"
            )
        finally:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [CHANGE_PARTITIONS_LOCK])
    if progress:
        progress(TABLE, dropped, dropped)
    return dropped, parts[-1].upper
