"""Per-object counts (``ObjectCount``): which objects ``keep_last`` can prune, without grouping every row.

``keep_last`` ranks the rows of each object newest first, and an object with
no more than ``keep_last`` rows loses none. Finding the others by grouping the
whole table cost a hash of every object (at 1,000,000 changes, seconds, and a
spill to disk). Instead a statement-level trigger on ``audit_stream_change``
keeps, per (event table, object id), the number of its changes and of its
folded events (each change written is one event folded), set-based, one
statement per fold batch; a ``keep_last`` prune, which reads the counts,
subtracts the events it deletes in the same statement as the delete (a prune
by age alone does not: one count row updated per object and batch cost it
half its speed and three times its WAL, for counts it never reads). A
partial index on each count makes "more than N" a range read of the objects
that have that many.

The counts only decide *which objects are ranked*; the ranking reads the rows
themselves, so the dry run and the real run stay exact. A count may only
err upwards (events pruned by age alone, a dropped partition, a
``--force``-deleted event are not subtracted): that costs ranking an object
that loses nothing. A count too low would keep rows the policy lets go, never
delete one it keeps.

Events written but not folded yet have no change, so no count: the objects
that have one are added from the fold's own definition of unfolded
(:mod:`audit_stream.stream.unfolded`, a range of the ``pgh_xid`` index).
"""

from __future__ import annotations

from audit_stream import triggers
from audit_stream.retention import batches
from audit_stream.stream import unfolded

__all__ = [
    "AFTER_SUBTRACT",
    "COUNT_TABLE",
    "EVENT_DELETE_BATCH",
    "SUBTRACT",
    "backfill",
    "install_sql",
    "uninstall_sql",
]

COUNT_TABLE = "audit_stream_object_count"
_FUNCTION = "_audit_stream_count_changes"
_INSERTED, _DELETED = "audit_stream_count_inserted", "audit_stream_count_deleted"


def install_sql() -> str:
    """The trigger function and the two statement-level triggers on ``audit_stream_change``.

    Both statements (a fold's insert, a prune's or an erasure's delete)
    upsert their objects' rows in key order, so two of them never deadlock.
    A delete of a change no count knows (none should be) leaves a negative
    count: never more than N, so never ranked for it.
    """
    function, counts = triggers.qualified(_FUNCTION), triggers.qualified(COUNT_TABLE)
    return f"""
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = {triggers.search_path()}
AS $$
BEGIN
    INSERT INTO {counts} AS n (event_table, object_id, changes, events)
    SELECT r.event_table, r.object_id,
           CASE WHEN TG_OP = 'INSERT' THEN count(*) ELSE -count(*) END,
           CASE WHEN TG_OP = 'INSERT' THEN count(*) ELSE 0 END
    FROM _audit_stream_rows AS r
    WHERE r.object_id IS NOT NULL
    GROUP BY r.event_table, r.object_id
    ORDER BY r.event_table, r.object_id
    ON CONFLICT (event_table, object_id) DO UPDATE
    SET changes = n.changes + excluded.changes, events = n.events + excluded.events;
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION {function}() FROM PUBLIC;
{triggers.change_trigger_sql(_INSERTED, function)}\
{triggers.change_trigger_sql(_DELETED, function, on="DELETE", rows="OLD")}"""


def uninstall_sql() -> str:
    return triggers.drop_change_trigger_sql(triggers.qualified(_FUNCTION), _INSERTED, _DELETED)


# The counts of the history there is already (migrate, once): the changes as
# they are, and every event of each event table (unfolded ones too: counted
# again when folded, an error upwards).
_BACKFILL_CHANGES = f"""
INSERT INTO {COUNT_TABLE} (event_table, object_id, changes, events)
SELECT c.event_table, c.object_id, count(*), 0
FROM audit_stream_change AS c WHERE c.object_id IS NOT NULL
GROUP BY c.event_table, c.object_id
ON CONFLICT (event_table, object_id) DO UPDATE SET changes = excluded.changes
"""

_BACKFILL_EVENTS = f"""
INSERT INTO {COUNT_TABLE} AS n (event_table, object_id, changes, events)
SELECT %(event_table)s, e.pgh_obj_id::text, 0, count(*)
FROM {{table}} AS e WHERE e.pgh_obj_id IS NOT NULL
GROUP BY e.pgh_obj_id::text
ON CONFLICT (event_table, object_id) DO UPDATE SET events = n.events + excluded.events
"""


def backfill(connection) -> None:
    """Count the changes and events already there (the migration that adds the counts runs it)."""
    from audit_stream import registry
    from audit_stream.models import RowLog

    tables = [table for table, model in registry.event_models.items() if model._pgh_has_obj]
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {COUNT_TABLE}")
        cursor.execute(_BACKFILL_CHANGES)
        for table in sorted({*tables, RowLog._meta.db_table}):
            cursor.execute("SELECT to_regclass(quote_ident(%s)) IS NOT NULL", [table])
            if cursor.fetchone()[0]:
                cursor.execute(
                    _BACKFILL_EVENTS.format(table=connection.ops.quote_name(table)), {"event_table": table}
                )


# The objects of an event table that may have more than `keep_last` events:
# more counted (a range of the partial (event_table, events) index); every
# object counted under a name the table had before a rename (its changes, so
# its counts, carry that name: all ranked, a superset); and those with an
# event not folded yet (not counted: its two parts apart, each a range of the
# pgh_xid index, where an OR would read the table). {object_type} is the type of pgh_obj_id
# (the counts hold it as text, as the fold writes it).
CROWDED_OBJECTS = f"""
SELECT n.object_id::{{object_type}} FROM {COUNT_TABLE} AS n
WHERE n.event_table = %(count_table)s AND n.events > 1 AND n.events > %(keep_last)s
UNION
SELECT n.object_id::{{object_type}} FROM {COUNT_TABLE} AS n
WHERE n.event_table = ANY(%(former_tables)s::text[])
UNION
SELECT e.pgh_obj_id FROM {{table}} AS e WHERE {unfolded.NEW}
UNION
SELECT e.pgh_obj_id FROM {{table}} AS e WHERE {unfolded.IN_PROGRESS}
"""

# The objects of the change feed that may have more changes than are kept
# (the latest always is): a range of the partial index on `changes`.
CROWDED_CHANGE_OBJECTS = f"""
SELECT n.event_table, n.object_id FROM {COUNT_TABLE} AS n
WHERE n.changes > 1 AND n.changes > greatest(1, %(keep_last)s::int)
"""

# A CTE that subtracts the events of {gone} (a CTE of deleted event rows, read
# as `g`, with pgh_obj_id) from their objects' counts. It returns the objects
# so that a CTE after it can wait for it (references.SUBTRACT's {after}).
SUBTRACT = f"""counted AS (
    INSERT INTO {COUNT_TABLE} AS n (event_table, object_id, changes, events)
    SELECT %(count_table)s, g.pgh_obj_id::text, 0, -count(*)
    FROM {{gone}} AS g WHERE g.pgh_obj_id IS NOT NULL
    GROUP BY g.pgh_obj_id::text
    ORDER BY g.pgh_obj_id::text
    ON CONFLICT (event_table, object_id) DO UPDATE SET events = n.events + excluded.events
    RETURNING n.object_id
)"""

# What a CTE that writes after SUBTRACT tests first: SUBTRACT done, its rows locked.
AFTER_SUBTRACT = "(SELECT count(*) FROM counted) >= 0"

# One batch of an event table's chosen rows (see batches.COUNTED_DELETE_BATCH), whose
# objects' counts lose the events deleted, in the same transaction. Returns
# the number of events deleted.
EVENT_DELETE_BATCH = batches.COUNTED_DELETE_BATCH.replace("{returning}", "t.pgh_obj_id").replace(
    "{counted}", ",\n" + SUBTRACT.replace("{gone}", "gone")
)

# Erasure: the object leaves no count behind.
ERASE_COUNTS = f"""
DELETE FROM {COUNT_TABLE} WHERE event_table = ANY(%(tables)s::text[]) AND object_id = %(pk)s
"""
