"""A fold checkpoint's identity: which table it belongs to, and which cluster its snapshot is of.

The fold (:mod:`audit_stream.stream.fold`) keeps one ``audit_stream_checkpoint``
row per event table. Two things long-lived databases do would make it lie:

* **A renamed table** (``AlterModelTable``, a renamed event model). The row
  records the table's ``pg_class`` oid (``relid``), which a rename keeps: a
  table without a checkpoint under its new name takes over the one recorded
  for its oid, if that one's table is gone, and keeps the old name in
  ``former_names`` (its ``Change`` rows still carry it).
* **A restore onto another cluster** (dump and restore, a logical-replication
  cut-over). The snapshot holds the old cluster's transaction ids, which mean
  nothing in the new one. The row records the cluster's system identifier;
  a checkpoint of another cluster, or one ahead of the cluster's current
  snapshot, is *foreign*: the fold recovers it (:data:`RECOVERY_INTERVAL`)
  before folding anything else, and retention deletes none of its events
  until then.

Recovery is exact because of two numbers the fold keeps with the snapshot:
``high``, the highest ``pgh_id`` committed when the interval's target snapshot
was taken (every event folded so far has an id up to it, so an event above it
was not folded), and, afterwards, ``floor``: the restored events whose old
transaction ids the new cluster would misread all have ids up to it, and are
folded; events written since the restore have higher ids (the restored
sequence goes on past every restored id).
"""

from __future__ import annotations

from dataclasses import dataclass

from audit_stream.stream import unfolded
from audit_stream.triggers import quote_name

__all__ = ["FOREIGN_SQL", "RECOVERY_INTERVAL", "Claim", "claim", "is_foreign", "recovered", "recovery_params"]

# The system identifier of the cluster we are connected to (initdb draws it; a
# dump restored elsewhere, or a logical replica, runs on another one).
CLUSTER_SQL = "(SELECT system_identifier::text FROM pg_control_system())"

# Whether checkpoint row `c` is of another cluster: recorded on another one, or
# ahead of every transaction this cluster has started (which also catches rows
# written before the cluster was recorded).
FOREIGN_SQL = f"""(
    (c.cluster IS NOT NULL AND c.cluster <> {CLUSTER_SQL})
    OR pg_snapshot_xmax(coalesce(c.target, c.snapshot)::pg_snapshot)
       > pg_snapshot_xmax(pg_current_snapshot())
)"""

# The table's oid now (unqualified names: the event tables live in the search path).
_RELID_SQL = "to_regclass(quote_ident(%(table)s))::oid"

_LOCK_SQL = f"""
SELECT c.snapshot, c.target, c.position, c.floor, c.high, c.former_names, {FOREIGN_SQL},
       c.cluster IS NOT NULL AND c.relid IS NOT DISTINCT FROM {_RELID_SQL}
FROM audit_stream_checkpoint AS c
WHERE c.event_table = %(table)s
FOR UPDATE SKIP LOCKED
"""

# A table renamed since its last fold takes over the checkpoint recorded for
# its oid, if that checkpoint's own table no longer exists (an oid is only
# reused after its table was dropped).
_RENAMED_SQL = f"""
UPDATE audit_stream_checkpoint AS c
SET event_table = %(table)s, former_names = c.former_names || c.event_table
WHERE c.relid = {_RELID_SQL}
  AND c.event_table <> %(table)s
  AND to_regclass(quote_ident(c.event_table)) IS NULL
"""

# A table's first checkpoint: nothing folded yet. Its events come from this
# cluster, unless they were restored from another one before any fold there
# (no checkpoint in the dump): events with transaction ids ahead of this
# cluster's say so, and then the checkpoint is born foreign (cluster unknown,
# nothing folded up to id 0), so the fold recovers it before anything else.
# One probe of the pgh_xid index, ordered (as wakeup's): an EXISTS lets the
# planner of a table never analysed (a first fold after a burst) read it all
# sequentially, hoping to meet a match at once.
_CREATE_SQL = """
INSERT INTO audit_stream_checkpoint
    (event_table, snapshot, position, folded, updated_at, relid, former_names, cluster, floor, high)
SELECT %(table)s, '1:1:', 0, 0, now(), {relid}, '{{}}',
       CASE WHEN restored.ahead THEN 'unknown' ELSE {cluster} END, 0, CASE WHEN restored.ahead THEN 0 END
FROM (SELECT (SELECT true FROM {table} AS e
               WHERE e.pgh_xid >= pg_snapshot_xmax(pg_current_snapshot())::text::bigint
               ORDER BY e.pgh_xid LIMIT 1) IS NOT NULL AS ahead)
    AS restored
ON CONFLICT (event_table) DO NOTHING
"""

# Records (or refreshes, after a rename or a recovered restore) the identity.
_STAMP_SQL = f"""
UPDATE audit_stream_checkpoint SET cluster = {CLUSTER_SQL}, relid = {_RELID_SQL}
WHERE event_table = %(table)s
"""

# Which events a recovery folds (the WHERE clause of the fold's batch query,
# read in one REPEATABLE READ snapshot). Up to `high`, the old cluster's own
# transaction ids say what it folded: the unfolded events of its `done`
# snapshot (audit_stream.stream.unfolded, the one definition), less the part
# of a half-folded interval written up to `position`. Above `high`, nothing
# was folded. Up to `floor` (an earlier restore's events), everything was.
RECOVERY_INTERVAL = f"""WHERE {unfolded.ABOVE_FLOOR}
  AND (e.pgh_id > %(high)s OR ({unfolded.UNFOLDED} AND NOT {unfolded.WRITTEN}))"""

# After a recovery, in its snapshot: the restored events that this cluster's
# snapshots would misread (their old transaction id is not visible in the
# current snapshot, yet the row is) and the highest id committed.
_FLOOR_SQL = """
SELECT coalesce(max(e.pgh_id) FILTER (
           WHERE NOT pg_visible_in_snapshot(e.pgh_xid::text::xid8, pg_current_snapshot())), 0),
       coalesce(max(e.pgh_id), 0)
FROM {table} AS e
"""

# Checkpoints written before `high` was recorded: the highest event id with a
# change (retention keeps each object's latest change, so the highest survives).
_HIGHEST_FOLDED_SQL = "SELECT coalesce(max(event_id), 0) FROM audit_stream_change WHERE event_table = ANY(%s)"


@dataclass
class Claim:
    """The locked checkpoint of one table, as the fold reads it."""

    done: str
    target: str | None
    position: int
    floor: int
    high: int | None
    names: list[str]  # the table's name, then its former names
    foreign: bool


def claim(cursor, table: str) -> Claim | None:
    """Lock ``table``'s checkpoint (creating it, or taking it over after a rename); None if busy."""
    row = _lock(cursor, table)
    if row is None:
        cursor.execute("SELECT 1 FROM audit_stream_checkpoint WHERE event_table = %s", [table])
        if cursor.fetchone() is not None:
            return None  # another fold holds it
        _create(cursor, table)
        row = _lock(cursor, table)
        if row is None:
            return None
    done, target, position, floor, high, former, foreign, stamped = row
    if not foreign and not stamped:
        cursor.execute(_STAMP_SQL, {"table": table})
    return Claim(done, target, position, floor, high, [table, *former], foreign)


def _lock(cursor, table: str):
    cursor.execute(_LOCK_SQL, {"table": table})
    return cursor.fetchone()


def _create(cursor, table: str) -> None:
    """Give ``table`` a checkpoint: the one of its former name after a rename, else a new one."""
    cursor.execute(_RENAMED_SQL, {"table": table})
    create = _CREATE_SQL.format(table=quote_name(table), relid=_RELID_SQL, cluster=CLUSTER_SQL)
    cursor.execute(create, {"table": table})


def is_foreign(cursor, table: str) -> bool:
    """Whether ``table``'s checkpoint is of another cluster (a restore the fold has not recovered yet).

    A table without a checkpoint gets one first (see ``_CREATE_SQL``).
    """
    sql = f"SELECT {FOREIGN_SQL} FROM audit_stream_checkpoint AS c WHERE c.event_table = %s"
    cursor.execute(sql, [table])
    row = cursor.fetchone()
    if row is None:
        _create(cursor, table)
        cursor.execute(sql, [table])
        row = cursor.fetchone()
    return bool(row and row[0])


def recovery_params(cursor, found: Claim) -> dict:
    """The parameters of :data:`RECOVERY_INTERVAL` for a foreign checkpoint."""
    high = found.high
    if high is None:
        cursor.execute(_HIGHEST_FOLDED_SQL, [found.names])
        high = cursor.fetchone()[0]
    return {
        "done": found.done,
        "target": found.target,
        "position": found.position,
        "floor": found.floor,
        "high": high,
    }


def recovered(cursor, table: str, quoted: str, floor: int, folded: int) -> None:
    """Make the checkpoint this cluster's after a recovery (same transaction and snapshot)."""
    cursor.execute(_FLOOR_SQL.format(table=quoted))
    misread, high = cursor.fetchone()
    floor = max(floor, misread)
    cursor.execute(
        "UPDATE audit_stream_checkpoint SET snapshot = pg_current_snapshot()::text, target = NULL,"
        " position = %(floor)s, floor = %(floor)s, high = %(high)s, folded = folded + %(folded)s,"
        " updated_at = now() WHERE event_table = %(table)s",
        {"floor": floor, "high": high, "folded": folded, "table": table},
    )
    cursor.execute(_STAMP_SQL, {"table": table})
