"""The stream's figures: what waits in each event table and fold lane, for how long, and what was folded.

The backlog of a lane is counted over the events its checkpoint has not
folded, found through the index on ``pgh_xid``: exactly up to
:data:`BACKLOG_EXACT`, estimated from the ``pgh_id`` range beyond ("≈"). A
table folded in lanes (``FOLD_LANES``, :mod:`audit_stream.stream.lanes`) shows
its totals and each lane's: its checkpoint, backlog and lag, so that one lane
left behind (its worker stuck or gone) is seen, not averaged away
(:attr:`Lane.stalled`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db import DEFAULT_DB_ALIAS, connections

from audit_stream import partitions, registry
from audit_stream.dashboard import formats
from audit_stream.dashboard.reading import rows
from audit_stream.models import LoggedTable
from audit_stream.stream import lanes as fold_lanes
from audit_stream.stream import unfolded

__all__ = ["BACKLOG_EXACT", "LANE_STALLED_SECONDS", "Lane", "StreamTable", "stream_tables"]

#: Unfolded events counted exactly per lane, at most; beyond, the backlog is estimated ("≈").
BACKLOG_EXACT = 100_000
#: A lane is stalled when events have waited this long and its checkpoint has not moved for as long.
LANE_STALLED_SECONDS = 60.0


@dataclass
class Lane:
    """One fold lane of an event table: its checkpoint, and what waits for it.

    Every table has at least lane 0 of 1; ``FOLD_LANES`` splits a table's
    objects over more (each with its own checkpoint row and fold task).
    """

    lane: int
    lanes: int  # how many lanes the table is folded in (as its checkpoint records)
    backlog: int
    backlog_exact: bool  # false: more than BACKLOG_EXACT, estimated
    lag_seconds: float | None  # age of the lane's oldest unfolded event
    folded_total: int  # Checkpoint.folded
    checkpoint_at: datetime | None  # when the lane's checkpoint last moved (None: never folded)
    checkpoint_age_seconds: float | None  # how long ago, on the database's clock
    snapshot: str  # every transaction this pg_snapshot shows committed is folded, for this lane
    position: int | None  # an interval half folded: the last pgh_id written (None: none in progress)

    @property
    def stalled(self) -> bool:
        """Events have waited :data:`LANE_STALLED_SECONDS` and the checkpoint has not moved for as long.

        A lane whose worker is stuck, dead or never started: its objects'
        changes stop while the other lanes go on.
        """
        if not self.backlog or self.lag_seconds is None or self.lag_seconds < LANE_STALLED_SECONDS:
            return False
        return self.checkpoint_age_seconds is None or self.checkpoint_age_seconds >= LANE_STALLED_SECONDS

    @property
    def backlog_display(self) -> str:
        return formats.count(self.backlog, estimated=not self.backlog_exact)

    @property
    def lag_display(self) -> str:
        return formats.duration(self.lag_seconds)

    @property
    def checkpoint_age_display(self) -> str:
        return formats.duration(self.checkpoint_age_seconds)

    def as_dict(self) -> dict:
        return {
            "lane": self.lane,
            "lanes": self.lanes,
            "backlog": self.backlog,
            "backlog_exact": self.backlog_exact,
            "lag_seconds": self.lag_seconds,
            "folded_total": self.folded_total,
            "checkpoint_updated_at": self.checkpoint_at,
            "checkpoint_age_seconds": self.checkpoint_age_seconds,
            "snapshot": self.snapshot,
            "position": self.position,
            "stalled": self.stalled,
        }


@dataclass
class StreamTable:
    """One event table: what is waiting, for how long, and what has been folded, in all and per lane."""

    event_table: str
    model: str
    backlog: int
    backlog_exact: bool  # false: more than BACKLOG_EXACT, estimated
    lag_seconds: float | None  # age of the oldest unfolded event
    folded_total: int  # Checkpoint.folded
    checkpoint_at: datetime | None
    folded_last_hour: int = 0
    folds_last_hour: int = 0
    # Partitioned tables (audit_stream.partitions): rows in the default partition
    # mean partitions were not created ahead (is beat running?).
    rows_in_default_partition: bool = False
    lanes: list[Lane] = field(default_factory=list)
    # FOLD_LANES now; when it differs from len(lanes), the next fold re-lanes the table.
    lanes_configured: int = 1

    @property
    def backlog_display(self) -> str:
        return formats.count(self.backlog, estimated=not self.backlog_exact)

    @property
    def lag_display(self) -> str:
        return formats.duration(self.lag_seconds)

    @property
    def stalled_lanes(self) -> list[Lane]:
        return [lane for lane in self.lanes if lane.stalled]

    @property
    def relaning(self) -> bool:
        """The setting asks for another number of lanes than recorded: the next fold re-lanes the table."""
        return bool(self.lanes) and self.lanes_configured != self.lanes[0].lanes

    def as_dict(self) -> dict:
        return {
            "event_table": self.event_table,
            "model": self.model,
            "backlog": self.backlog,
            "backlog_exact": self.backlog_exact,
            "lag_seconds": self.lag_seconds,
            "folded_total": self.folded_total,
            "checkpoint_updated_at": self.checkpoint_at,
            "folded_last_hour": self.folded_last_hour,
            "folds_last_hour": self.folds_last_hour,
            "rows_in_default_partition": self.rows_in_default_partition,
            "lanes_configured": self.lanes_configured,
            "lanes": [lane.as_dict() for lane in self.lanes],
        }


# Each lane's checkpoint (one per table unless it is folded in lanes:
# audit_stream.stream.lanes), and how long ago it moved on the database's clock.
_CHECKPOINTS_SQL = """
SELECT event_table, snapshot, target, position, folded, updated_at, floor, lane, lanes,
       extract(epoch FROM clock_timestamp() - updated_at)::float8
FROM audit_stream_checkpoint
ORDER BY event_table, lane
"""

# The unfolded events of one lane of one event table (audit_stream.stream.unfolded,
# the fold's own definition, counted instead of probed: events up to a restore's
# `floor` are folded), less, while a fold is half-way through an interval, the
# events it has already written (unfolded.WRITTEN).
#
# Each part of the definition is read through the pgh_xid index in xid order,
# so the cost follows the backlog, not the table, and LIMIT caps the work when
# the stream is far behind (the caller then estimates the count). Oldest
# transactions come first, so the oldest creation time and the lowest pgh_id
# stay right in practice.
_BACKLOG_SQL = f"""
SELECT count(*), extract(epoch FROM clock_timestamp() - min(u.pgh_created_at))::float8, min(u.pgh_id)
FROM (
    (SELECT e.pgh_id, e.pgh_created_at FROM {{table}} AS e
     WHERE {unfolded.NEW} AND NOT {unfolded.WRITTEN} AND {{in_lane}}
     ORDER BY e.pgh_xid LIMIT %(cap)s)
    UNION ALL
    (SELECT e.pgh_id, e.pgh_created_at FROM {{table}} AS e
     WHERE {unfolded.IN_PROGRESS} AND NOT {unfolded.WRITTEN} AND {{in_lane}}
     ORDER BY e.pgh_xid LIMIT %(cap)s)
) AS u
"""

# Past the cap: the events from the oldest unfolded one to the newest (the
# primary key's last entry). Ids are drawn in insertion order, so this counts
# the backlog, plus the few events of that range already folded (or of other
# lanes: a lane's share is estimated as its fraction of the range) and the ids
# of rolled-back writes.
_LAST_ID_SQL = "SELECT max(pgh_id) FROM {table}"

# Per event table, the events folded in the chart's window (the last 60 minutes).
_FOLDED_BY_TABLE_SQL = """
SELECT event_table, sum(folded)::bigint, count(*)
FROM audit_stream_foldrun
WHERE finished_at >= date_trunc('minute', now()) - interval '59 minutes'
GROUP BY event_table
"""


def _row_log_in_use(checkpoints: dict, using: str) -> bool:
    """Whether to show the row log: logging is on, or it has been folded."""
    return registry.ROW_LOG_TABLE in checkpoints or LoggedTable.objects.using(using).exists()


def _configured(table: str) -> int:
    """The lanes ``FOLD_LANES`` gives ``table``; 1 if the setting is malformed (its system check says so)."""
    try:
        return fold_lanes.configured(table)
    except (AttributeError, TypeError):
        return 1


def _never_folded(table: str) -> list[tuple]:
    """The checkpoint rows of a table without any yet: every event is new, in the lanes the setting gives."""
    count = _configured(table)
    return [("1:1:", None, 0, 0, None, 0, lane, count, None) for lane in range(count)]


def stream_tables(using: str = DEFAULT_DB_ALIAS, *, exact_up_to: int | None = None) -> list[StreamTable]:
    """Every event table in the registry, with its backlog, lag and folded totals, and each lane's."""
    cap = exact_up_to or BACKLOG_EXACT
    checkpoints: dict[str, list] = {}
    for row in rows(_CHECKPOINTS_SQL, using=using):
        checkpoints.setdefault(row[0], []).append(row[1:])
    last_hour = {row[0]: row[1:] for row in rows(_FOLDED_BY_TABLE_SQL, using=using)}
    tables = {
        table: model.pgh_tracked_model._meta.label_lower for table, model in registry.event_models.items()
    }
    if _row_log_in_use(checkpoints, using):
        tables[registry.ROW_LOG_TABLE] = "(row log of initlogging)"
    found = []
    with connections[using].cursor() as cursor:
        for table, model_label in sorted(tables.items()):
            found.append(_table(cursor, table, model_label, checkpoints.get(table), cap))
            found[-1].folded_last_hour, found[-1].folds_last_hour = last_hour.get(table, (0, 0))
    return found


def _table(cursor, table: str, model_label: str, checkpoint_rows: list | None, cap: int) -> StreamTable:
    """One table's figures: each lane counted on its own, then summed (backlog) or the worst taken (lag)."""
    quoted = cursor.db.ops.quote_name(table)
    sql = _BACKLOG_SQL.format(table=quoted, in_lane=fold_lanes.in_lane(registry.event_model(table)))
    found, firsts = [], {}
    for row in checkpoint_rows or _never_folded(table):
        done, target, position, folded, updated_at, floor, lane, count, age = row
        params = {"done": done, "target": target, "position": position, "floor": floor}
        cursor.execute(sql, {**params, **fold_lanes.params(lane, count), "cap": cap + 1})
        backlog, lag, first_id = cursor.fetchone()
        if first_id is not None:
            firsts[lane] = first_id
        found.append(
            Lane(
                lane=lane,
                lanes=count,
                backlog=backlog,
                backlog_exact=backlog <= cap,
                lag_seconds=lag,
                folded_total=folded,
                checkpoint_at=updated_at,
                checkpoint_age_seconds=age,
                snapshot=done,
                position=position if target is not None else None,
            )
        )
    total = sum(lane.backlog for lane in found)
    exact = all(lane.backlog_exact for lane in found)
    if not exact:
        cursor.execute(_LAST_ID_SQL.format(table=quoted))
        last_id = cursor.fetchone()[0]
        for lane in found:
            if not lane.backlog_exact:  # this lane's share of the ids from its oldest unfolded event on
                lane.backlog = max(lane.backlog, (last_id - firsts[lane.lane] + 1) // lane.lanes)
        total = max(total, last_id - min(firsts.values()) + 1)
    return StreamTable(
        event_table=table,
        model=model_label,
        backlog=total,
        backlog_exact=exact,
        lag_seconds=max((lane.lag_seconds for lane in found if lane.lag_seconds is not None), default=None),
        folded_total=sum(lane.folded_total for lane in found),
        # The checkpoint is as old as its least recently moved lane.
        checkpoint_at=min((lane.checkpoint_at for lane in found if lane.checkpoint_at), default=None),
        rows_in_default_partition=(
            partitions.is_partitioned(cursor, table) and partitions.default_rows(cursor, table)
        ),
        lanes=found,
        lanes_configured=_configured(table),
    )
