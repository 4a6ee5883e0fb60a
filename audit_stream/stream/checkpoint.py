"""A fold checkpoint's identity: which table and lane it belongs to, and which cluster its snapshot is of.

The fold (:mod:`audit_stream.stream.fold`) keeps one ``audit_stream_checkpoint``
row per lane of each event table (one lane unless ``FOLD_LANES`` says more:
:mod:`audit_stream.stream.lanes`); each lane is locked, folded, recovered and
re-stamped on its own. Two things long-lived databases do would make it lie:

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

__all__ = [
    "FOREIGN_SQL",
    "RECOVERY_INTERVAL",
    "Claim",
    "claim",
    "claim_all",
    "ensure",
    "folded",
    "folded_tables",
    "is_foreign",
    "layout",
    "recovered",
    "recovery_params",
    "relaned",
]

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

_COLUMNS = f"""c.snapshot, c.target, c.position, c.floor, c.high, c.former_names, {FOREIGN_SQL},
       c.cluster IS NOT NULL AND c.relid IS NOT DISTINCT FROM {_RELID_SQL}, c.lane, c.lanes, c.folded"""

_LOCK_SQL = f"""
SELECT {_COLUMNS}
FROM audit_stream_checkpoint AS c
WHERE c.event_table = %(table)s AND c.lane = %(lane)s
FOR UPDATE SKIP LOCKED
"""

# Every lane of a table, for a change of the number of lanes (all or nothing:
# a lane another fold holds is skipped, and then the caller backs off).
_LOCK_ALL_SQL = f"""
SELECT {_COLUMNS}
FROM audit_stream_checkpoint AS c
WHERE c.event_table = %(table)s
ORDER BY c.lane
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

# A table's first checkpoint, one row per lane: nothing folded yet. Its events
# come from this cluster, unless they were restored from another one before
# any fold there (no checkpoint in the dump): events with transaction ids ahead
# of this cluster's say so, and then the checkpoint is born foreign (cluster
# unknown, nothing folded up to id 0), so the fold recovers it before anything
# else. Only a table without any row gets rows (_CREATE_LOCK_SQL serialises
# the creators): a lane missing beside others is never created from scratch,
# which would fold its events a second time. One probe of the pgh_xid index,
# ordered (as wakeup's): an EXISTS lets the planner of a table never analysed
# (a first fold after a burst) read it all sequentially, hoping to meet a
# match at once.
_CREATE_SQL = """
INSERT INTO audit_stream_checkpoint
    (event_table, lane, lanes, snapshot, position, folded, updated_at, relid, former_names, cluster,
     floor, high)
SELECT %(table)s, lane, %(lanes)s, '1:1:', 0, 0, now(), {relid}, '{{}}',
       CASE WHEN restored.ahead THEN 'unknown' ELSE {cluster} END, 0, CASE WHEN restored.ahead THEN 0 END
FROM (SELECT (SELECT true FROM {table} AS e
               WHERE e.pgh_xid >= pg_snapshot_xmax(pg_current_snapshot())::text::bigint
               ORDER BY e.pgh_xid LIMIT 1) IS NOT NULL AS ahead)
    AS restored,
    generate_series(0, %(lanes)s - 1) AS lane
WHERE NOT EXISTS (SELECT 1 FROM audit_stream_checkpoint AS c WHERE c.event_table = %(table)s)
ON CONFLICT (event_table, lane) DO NOTHING
"""

# Held by a transaction creating a table's checkpoint rows until it commits.
_CREATE_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('audit_stream_checkpoint'), hashtext(%(table)s))"

# Records (or refreshes, after a rename or a recovered restore) the identity of one lane.
_STAMP_SQL = f"""
UPDATE audit_stream_checkpoint SET cluster = {CLUSTER_SQL}, relid = {_RELID_SQL}
WHERE event_table = %(table)s AND lane = %(lane)s
"""

# The number of lanes recorded for a table (the same on each of its rows).
_LAYOUT_SQL = "SELECT max(lanes) FROM audit_stream_checkpoint WHERE event_table = %s"

# What every lane of a table has folded, for retention: the earliest of the
# lanes' `done` snapshots (each lane's events visible in it are folded, since
# every lane's own snapshot was taken after it), the lowest restored `floor`,
# and whether any lane is of another cluster. Snapshots taken one after the
# other never have a lower xmax, nor (for an equal xmax) a lower xmin, nor
# (for both equal) more transactions in progress: ordered by those, the first
# is the earliest.
_FOLDED_SQL = f"""
SELECT c.snapshot, min(c.floor) OVER (), bool_or({FOREIGN_SQL}) OVER ()
FROM audit_stream_checkpoint AS c
WHERE c.event_table = %s
ORDER BY pg_snapshot_xmax(c.snapshot::pg_snapshot), pg_snapshot_xmin(c.snapshot::pg_snapshot),
         (SELECT count(*) FROM pg_snapshot_xip(c.snapshot::pg_snapshot)) DESC
LIMIT 1
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
    """The locked checkpoint of one lane of one table, as the fold reads it."""

    done: str
    target: str | None
    position: int
    floor: int
    high: int | None
    names: list[str]  # the table's name, then its former names
    foreign: bool
    lane: int = 0
    lanes: int = 1  # how many lanes the table is folded in (the number to hash with)
    folded: int = 0


def claim(cursor, table: str, lane: int = 0, *, lanes: int = 1) -> Claim | None:
    """Lock lane ``lane`` of ``table``'s checkpoint; None if another fold holds it, or it does not exist.

    A table without checkpoint rows gets ``lanes`` of them first (or takes
    over its rows after a rename).
    """
    row = _lock(cursor, table, lane)
    if row is None:
        cursor.execute(
            "SELECT 1 FROM audit_stream_checkpoint WHERE event_table = %s AND lane = %s", [table, lane]
        )
        if cursor.fetchone() is not None:
            return None  # another fold holds it
        _create(cursor, table, lanes)
        row = _lock(cursor, table, lane)
        if row is None:
            return None  # held meanwhile, or not a lane of the table's recorded layout
    found = _claim(table, row)
    if not found.foreign and not row[7]:
        cursor.execute(_STAMP_SQL, {"table": table, "lane": lane})
    return found


def claim_all(cursor, table: str) -> list[Claim] | None:
    """Lock every lane of ``table``'s checkpoint (for a change of lanes); None if a fold holds one."""
    cursor.execute(_LOCK_ALL_SQL, {"table": table})
    rows = cursor.fetchall()
    cursor.execute("SELECT count(*) FROM audit_stream_checkpoint WHERE event_table = %s", [table])
    if len(rows) < cursor.fetchone()[0]:
        return None
    return [_claim(table, row) for row in rows]


def _claim(table: str, row) -> Claim:
    done, target, position, floor, high, former, foreign, _, lane, lanes, folded = row
    return Claim(done, target, position, floor, high, [table, *former], foreign, lane, lanes, folded)


def _lock(cursor, table: str, lane: int):
    cursor.execute(_LOCK_SQL, {"table": table, "lane": lane})
    return cursor.fetchone()


def _create(cursor, table: str, lanes: int) -> None:
    """Give ``table`` its checkpoint rows: those of its former name after a rename, else new ones."""
    cursor.execute(_RENAMED_SQL, {"table": table})
    cursor.execute(_CREATE_LOCK_SQL, {"table": table})
    create = _CREATE_SQL.format(table=quote_name(table), relid=_RELID_SQL, cluster=CLUSTER_SQL)
    cursor.execute(create, {"table": table, "lanes": lanes})


def layout(cursor, table: str) -> int | None:
    """How many lanes ``table``'s checkpoint records (None: the table was never folded)."""
    cursor.execute(_LAYOUT_SQL, [table])
    return cursor.fetchone()[0]


def folded(cursor, table: str) -> tuple[str | None, int, bool]:
    """What every lane of ``table`` has folded: (snapshot, restored floor, whether any lane is foreign).

    Each lane's events visible in the snapshot are folded, as are those up to
    the floor. ``(None, 0, False)`` for a table never folded.
    """
    cursor.execute(_FOLDED_SQL, [table])
    return cursor.fetchone() or (None, 0, False)


# The same for several tables in one round trip (retention's contexts read every table's).
_FOLDED_TABLES_SQL = f"""
SELECT t.name, f.* FROM unnest(%s::text[]) AS t (name)
LEFT JOIN LATERAL ({_FOLDED_SQL.replace("%s", "t.name")}) AS f ON true
"""


def folded_tables(cursor, tables: list[str]) -> dict[str, tuple[str | None, int, bool]]:
    """:func:`folded` of each of ``tables``, read in one query, in the order given."""
    cursor.execute(_FOLDED_TABLES_SQL, [tables])
    found = {name: (done, floor or 0, bool(foreign)) for name, done, floor, foreign in cursor.fetchall()}
    return {table: found[table] for table in tables}


def relaned(cursor, table: str, old: list[Claim], lanes: int, snapshot: str, high: int, folded: int) -> None:
    """Replace the lanes ``old`` (locked, all folded up to ``snapshot``) by ``lanes`` new ones at it.

    The counters carry over (lane 0 holds the table's total); a restore's
    floor is the highest of the old lanes' (every event up to it is a restored
    one, and each recovered lane folded its own).
    """
    first = old[0]
    cursor.execute("DELETE FROM audit_stream_checkpoint WHERE event_table = %s", [table])
    cursor.execute(
        f"""INSERT INTO audit_stream_checkpoint
            (event_table, lane, lanes, snapshot, target, position, folded, updated_at, relid, former_names,
             cluster, floor, high)
        SELECT %(table)s, lane, %(lanes)s, %(snapshot)s, NULL, %(floor)s,
               CASE WHEN lane = 0 THEN %(folded)s ELSE 0 END, now(), {_RELID_SQL}, %(former)s,
               {CLUSTER_SQL}, %(floor)s, %(high)s
        FROM generate_series(0, %(lanes)s - 1) AS lane""",
        {
            "table": table,
            "lanes": lanes,
            "snapshot": snapshot,
            "floor": max(claim.floor for claim in old),
            "folded": sum(claim.folded for claim in old) + folded,
            "former": first.names[1:],
            "high": high,
        },
    )


def ensure(cursor, table: str, lanes: int) -> int:
    """Give ``table`` checkpoint rows (``lanes`` of them) unless it has some; the number it records.

    Call it inside a transaction: concurrent creators wait for each other
    there, so a table never gets rows of two different numbers of lanes.
    """
    recorded = layout(cursor, table)
    if recorded is None:
        _create(cursor, table, lanes)
        recorded = layout(cursor, table)
    return recorded


def is_foreign(cursor, table: str, lane: int = 0) -> bool:
    """Whether lane ``lane`` of ``table``'s checkpoint is of another cluster (a restore not recovered yet)."""
    sql = f"SELECT {FOREIGN_SQL} FROM audit_stream_checkpoint AS c WHERE c.event_table = %s AND c.lane = %s"
    cursor.execute(sql, [table, lane])
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


def recovered(cursor, table: str, quoted: str, floor: int, folded: int, lane: int = 0) -> None:
    """Make the checkpoint's lane this cluster's after a recovery (same transaction and snapshot)."""
    cursor.execute(_FLOOR_SQL.format(table=quoted))
    misread, high = cursor.fetchone()
    floor = max(floor, misread)
    cursor.execute(
        "UPDATE audit_stream_checkpoint SET snapshot = pg_current_snapshot()::text, target = NULL,"
        " position = %(floor)s, floor = %(floor)s, high = %(high)s, folded = folded + %(folded)s,"
        " updated_at = now() WHERE event_table = %(table)s AND lane = %(lane)s",
        {"floor": floor, "high": high, "folded": folded, "table": table, "lane": lane},
    )
    cursor.execute(_STAMP_SQL, {"table": table, "lane": lane})
