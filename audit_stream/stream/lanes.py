"""Fold lanes: one event table folded by N workers at once, each object in exactly one lane.

A table's fold is serialised by its checkpoint row's lock. With
``AUDIT_STREAM["FOLD_LANES"] = {"shop.OrderEvent": 4}`` the table's events are
split into 4 lanes by a hash of their object id (:data:`IN_LANE`, the one
definition), each lane with its own checkpoint row (``lane`` is part of the
checkpoint's key) and its own fold task, so 4 workers fold the table in
parallel. Per object nothing changes: all of an object's events are in one
lane, which folds them in ``pgh_id`` order, and the previous state an event
is diffed against (the object's last ``Change``) was written by that lane.

The number of lanes a table is folded with is recorded on its checkpoint rows
(``lanes``): the fold hashes with the recorded number, never with the setting,
so two workers that disagree on the setting (a rolling deploy) never split the
table two ways at once. When the setting and the record differ, the next fold
re-lanes the table (:func:`audit_stream.stream.fold.fold`): in one transaction
it locks every lane's checkpoint, folds each lane up to one common snapshot,
and replaces the rows by the new lanes, all starting at that snapshot. No event
is skipped or folded twice across the change, whatever the lanes' progress.

The row log of ``initlogging`` (``audit_stream_row_log`` with its DDL log)
always folds in one lane: its schema changes must land between the row
changes of every object of their table.
"""

from __future__ import annotations

from audit_stream import config, registry, rowlog

__all__ = ["IN_LANE", "LANE_OF", "MAX_LANES", "configured", "in_lane", "params", "problems"]

#: The most lanes a table may have (a lane is a worker's job; more than this is a typo).
MAX_LANES = 64

# The lane of an object, of %(lanes)s: a stable hash of the object id's text
# (hashtext, PostgreSQL's own; cast to bigint before abs() so that -2^31
# cannot overflow), modulo the number of lanes. Events without an object id
# (event models declared without obj_fk) are in lane 0.
LANE_OF = "coalesce(mod(abs(hashtext({object_id})::bigint), %(lanes)s), 0)"

# Whether event row `e` belongs to lane %(lane)s of %(lanes)s, written as "in
# none of the other lanes" (%(other_lanes)s, see params()). PostgreSQL has no
# statistics on the expression: it would estimate "= lane" at 0.5% of the rows,
# so a batch's LIMIT would look far away and the planner would scan the whole
# table and sort it, for every batch (measured: 5x the CPU per event with
# 200,000 events). "<> each other lane" is estimated at 99.5% per other lane,
# which keeps the plan of a table without lanes: the primary key walked from
# the interval's first event, reading about N rows for each one of the lane.
# With one lane the bound value makes the test constant: the planner drops it.
IN_LANE = f"(%(lanes)s = 1 OR {LANE_OF} <> ALL(%(other_lanes)s::int[]))"


def in_lane(model) -> str:
    """:data:`IN_LANE` for the event rows ``e`` of ``model``'s table."""
    has_object = getattr(model, "_pgh_has_obj", False) and model._meta.db_table != rowlog.ROW_LOG_TABLE
    return IN_LANE.replace("{object_id}", "e.pgh_obj_id::text" if has_object else "NULL::text")


def params(lane: int, lanes: int) -> dict:
    """The parameters of :data:`IN_LANE` for lane ``lane`` of ``lanes``."""
    return {"lane": lane, "lanes": lanes, "other_lanes": [other for other in range(lanes) if other != lane]}


def configured(event_table: str) -> int:
    """The number of lanes ``FOLD_LANES`` gives ``event_table`` (1 for the row log)."""
    if event_table == rowlog.ROW_LOG_TABLE:
        return 1

    setting = config.fold_lanes()
    model = registry.event_models.get(event_table)
    if model is not None:
        by_lower = {str(key).lower(): value for key, value in setting.items()}
        value = by_lower.get(model._meta.label_lower)
        if value is not None:
            return value
    return setting.get("default", 1)


def problems() -> list[str]:
    """What is wrong with ``FOLD_LANES`` (for the system check), in sentences that say the fix."""

    setting = config.fold_lanes()
    if not isinstance(setting, dict):
        return []  # reported by the settings check (a dict is expected)
    labels = {model._meta.label_lower: model._meta.label for model in registry.event_models.values()}
    found = []
    for key, value in setting.items():
        name = f'AUDIT_STREAM["FOLD_LANES"][{key!r}]'
        if key == "audit_stream.RowLog" or key == rowlog.ROW_LOG_TABLE:
            found.append(f"{name}: the row log of initlogging always folds in one lane; remove the key.")
        elif key != "default" and str(key).lower() not in labels:
            example = next(iter(sorted(labels.values())), "shop.OrderEvent")
            found.append(f'{name}: unknown key; use "default" or an event model label such as {example!r}.')
        elif isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LANES:
            found.append(f"{name} must be a whole number of lanes from 1 to {MAX_LANES}, not {value!r}.")
    return found
