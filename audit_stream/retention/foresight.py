"""What a dry run's deletes would take off the contexts' references: its contexts count made exact.

The real run prunes the event tables and the change feed first, then deletes
the contexts nothing refers to any more, those whose only references were the
events and changes it has just deleted among them. A dry run deletes nothing;
instead each of its deletes notes here, in temporary tables of the session,
what it would take away:

* the folded events it would take off the per-context counts (the batches'
  :data:`~audit_stream.retention.references.SUBTRACT` and the partitions
  dropped whole, the same statements writing here instead): :data:`FORESEEN`'s
  ``events``, negative, added to the counts;
* the events it would delete that no count holds (unfolded ones with
  ``force``, or every one of a table whose checkpoint is unknown), which the
  contexts step reads from the tables: their keys, :data:`FORESEEN_EVENTS`,
  which the dry run's read skips;
* the changes it would delete: their number per context, :data:`FORESEEN`'s
  ``changes``, which the dry run skips in the feed's ``(context_id, id)``
  index (a context is referred to by a change when it has more than that).

The candidates are joined back to their rows one by one through the primary
key: no table is read whole for this.
"""

from __future__ import annotations

from audit_stream.retention import references
from audit_stream.stream import unfolded

__all__ = [
    "FORESEEN",
    "FORESEEN_EVENTS",
    "create",
    "drop",
    "note_change_partition",
    "note_changes",
    "note_events",
]

# Per context: the folded events the run would subtract from its count (a
# negative number, as the counts' own delta) and the changes it would delete.
FORESEEN = "_audit_stream_foreseen"
# The events the run would delete that no count holds: (table, pgh_id).
FORESEEN_EVENTS = "_audit_stream_foreseen_events"

# The batches' subtraction (references.SUBTRACT), written to FORESEEN. Its
# checkpoint is bound as %(counted_done)s: the run subtracts nothing of a table
# whose checkpoint is another cluster's, though it chooses by it.
_SUBTRACT = (
    references.SUBTRACT.replace(references.COUNT_TABLE, FORESEEN)
    .replace("{gone}", "gone")
    .replace("{after}", "TRUE")
    .replace("%(done)s", "%(counted_done)s")
)

# The events a dry run would delete ({select}: its candidates' SELECT of
# pgh_id), joined back to their rows by primary key: the folded ones noted per
# context as the run subtracts them, the others by key (%(table)s), and all
# counted. Each row through the primary key (a lateral subquery the planner may
# not flatten, OFFSET 0: a hash join read the whole table for 20,000 candidates).
_EVENTS = f"""
WITH gone AS MATERIALIZED (
    SELECT e.pgh_id, e.pgh_xid, e.pgh_context_id FROM ({{select}}) AS d (id)
    CROSS JOIN LATERAL (SELECT * FROM {{table}} AS e WHERE e.pgh_id = d.id OFFSET 0) AS e
), {_SUBTRACT}, uncounted AS (
    INSERT INTO {FORESEEN_EVENTS} (event_table, id)
    SELECT %(table)s, e.pgh_id FROM gone AS e
    WHERE e.pgh_context_id IS NOT NULL
      AND NOT (%(counted_done)s::pg_snapshot IS NOT NULL AND NOT {unfolded.UNFOLDED})
)
SELECT count(*) FROM gone
""".replace("%(floor)s", "%(counted_floor)s")

# The changes a dry run would delete ({select}: their ids, or {where}: the
# changes `c` of one partition that would go), noted per context, and counted.
_CHANGES = f"""
WITH per_context AS MATERIALIZED (
    SELECT c.context_id, count(*) AS changes FROM {{changes}} GROUP BY c.context_id
), noted AS (
    INSERT INTO {FORESEEN} AS f (context_id, changes)
    SELECT p.context_id, p.changes FROM per_context AS p WHERE p.context_id IS NOT NULL
    ON CONFLICT (context_id) DO UPDATE SET changes = f.changes + excluded.changes
)
SELECT coalesce(sum(changes), 0)::bigint FROM per_context
"""


def create(cursor) -> None:
    """The (empty) temporary tables of a dry run, for the session."""
    cursor.execute(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {FORESEEN}"
        " (context_id uuid PRIMARY KEY, events bigint NOT NULL DEFAULT 0, changes bigint NOT NULL DEFAULT 0)"
    )
    cursor.execute(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {FORESEEN_EVENTS}"
        " (event_table text, id bigint, PRIMARY KEY (event_table, id))"
    )
    cursor.execute(f"TRUNCATE {FORESEEN}, {FORESEEN_EVENTS}")


def drop(cursor) -> None:
    cursor.execute(f"DROP TABLE IF EXISTS {FORESEEN}, {FORESEEN_EVENTS}")


def note_events(cursor, table: str, select: str, params: dict, done, floor) -> int:
    """Note the events of ``table`` chosen by ``select`` (``params``); their number.

    ``done``, ``floor``: the checkpoint the run's batches subtract by (``done``
    None when it is another cluster's).
    """
    sql = _EVENTS.format(select=select, table=cursor.db.ops.quote_name(table))
    cursor.execute(sql, {**params, "table": table, "counted_done": done, "counted_floor": floor})
    return cursor.fetchone()[0]


def note_changes(cursor, select: str, params: dict) -> int:
    """Note the changes chosen by ``select`` (their ids, ``params``); their number."""
    changes = (  # each through the primary key, as _EVENTS's rows
        f"({select}) AS d (id)"
        " CROSS JOIN LATERAL (SELECT * FROM audit_stream_change AS c WHERE c.id = d.id OFFSET 0) AS c"
    )
    cursor.execute(_CHANGES.format(changes=changes), params)
    return cursor.fetchone()[0]


def note_change_partition(cursor, name: str, doomed: str) -> int:
    """Note the changes ``c`` of partition ``name`` for which ``doomed`` holds; their number."""
    changes = f"{cursor.db.ops.quote_name(name)} AS c WHERE {doomed}"
    cursor.execute(_CHANGES.format(changes=changes))
    return cursor.fetchone()[0]
