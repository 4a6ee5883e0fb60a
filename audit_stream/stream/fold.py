"""The fold: committed events become ``Change`` rows, exactly once, in order per object.

Event ids are not commit-ordered: a transaction that commits late can hold
lower ids, so a "last id" watermark would skip its events. Instead each event
table's checkpoint stores a PostgreSQL snapshot (``pg_snapshot``), as PgQ does:

* ``done``: every transaction committed in this snapshot has been folded;
* a fold takes a new snapshot ``target`` and folds exactly the events whose
  writing transaction (``pgh_xid``) is visible in ``target`` but not in
  ``done``, in ``pgh_id`` order, then stores ``target`` as the new ``done``.

Each transaction becomes visible in exactly one interval, so every event is
folded once; a long transaction holds back only its own events. Per object,
``pgh_id`` order is the order the changes happened (a row lock serialises
writers of one row, and the later writer takes its ids after the earlier one
committed), and a later writer's transaction cannot become visible before an
earlier one's.

One fold batch is one transaction: it locks the checkpoint row (``SKIP
LOCKED``: a concurrent fold of the same table backs off), writes the
``Change`` rows and moves the checkpoint. Killed half-way, it rolls back and
the next fold redoes it. ``Change`` has a unique (event_table, event_id) key as
a last line of defence.

The checkpoint follows its table through renames and belongs to one cluster:
a restore onto another one is recovered, exactly, before anything else is
folded (:mod:`audit_stream.stream.checkpoint`).

A table may be folded in several lanes (:mod:`audit_stream.stream.lanes`):
each lane is a share of the table's objects with a checkpoint row of its own,
folded as above by its own worker; a change of the number of lanes is made
in one transaction that folds every lane up to one snapshot first (:func:`_relane`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import DEFAULT_DB_ALIAS, OperationalError, connections, transaction

from audit_stream import config, events, masking, rowlog, tracking
from audit_stream.sinks import messages as sink_messages
from audit_stream.stream import checkpoint, lanes, unfolded, wakeup
from audit_stream.webhooks import messages

__all__ = ["FoldResult", "fold", "fold_all"]

# Columns of an event row that are not the tracked object's state.
_PGH_COLUMNS = ["pgh_id", "pgh_created_at", "pgh_label", "pgh_xid", "pgh_obj_id", "pgh_context_id"]

# The events of one batch: the interval's (audit_stream.stream.unfolded), after
# `position`: the last pgh_id of the previous batch of the interval, or, for
# its first batch, just below the interval's lowest pgh_id (_FIRST_ID_SQL).
# The primary key walks from there; nothing older is read, whatever vacuum
# has or has not done. It walks at most to `window_end`, a batch's worth of ids
# further (or the interval's highest id), and the interval's tests are row
# filters (unfolded.filter_only), so
# the primary key is the only way in: a batch reads at most `limit` rows
# whatever the planner's statistics say (a table never analysed included).
# A window with fewer events (other transactions', other lanes') leaves the
# rest to the next batch; past an empty one, the next starts just below the
# interval's next id (_FIRST_ID_SQL's `above`), so gaps cost no reading.
_IN_BATCH = f"""WHERE e.pgh_id > %(position)s AND e.pgh_id <= %(window_end)s
      AND {unfolded.filter_only(unfolded.IN_INTERVAL)}"""

# The transaction of an event, kept on its Change: its id (pgh_xid) and the
# command that wrote the event inside it (the row's cmin, a system column
# every row carries for free: event rows are never updated, so it is the
# inserting command's id). Commands count up through a transaction across all
# tables, so (command_id, event_id) is the order a transaction's changes
# happened in (Change.objects.for_transaction). Nothing is added to the write path.
_TRANSACTION_COLUMNS = "e.pgh_xid AS transaction_id, e.cmin::text::bigint AS command_id"
# The lowest pgh_id of an interval, found through the pgh_xid index: one
# range for the transactions that started after `done`, one list for those
# in progress then. `+ 0` keeps the planner from answering min() by walking
# the primary key from the table's first row and testing each. `above`: past
# an empty window of a batch, the interval's next id after it.
_FIRST_ID_SQL = f"""
SELECT least(
    (SELECT min(e.pgh_id + 0) FROM {{table}} AS e
     WHERE {unfolded.NEW}
       AND e.pgh_xid < pg_snapshot_xmax(%(target)s::pg_snapshot)::text::bigint
       AND pg_visible_in_snapshot(e.pgh_xid::text::xid8, %(target)s::pg_snapshot)
       AND e.pgh_id + 0 > %(above)s),
    (SELECT min(e.pgh_id + 0) FROM {{table}} AS e
     WHERE {unfolded.IN_PROGRESS}
       AND pg_visible_in_snapshot(e.pgh_xid::text::xid8, %(target)s::pg_snapshot)
       AND e.pgh_id + 0 > %(above)s)
)
"""

# A batch of an event table. For each event, `before` is the object's previous
# state: the previous event of the object in this batch, else the last change
# already folded for it. _audit_stream_diff (audit_stream.triggers.DIFF_FUNCTION)
# gives {column: [old, new]} for the columns that differ (all of them for an
# object's first event), and {column: [old, null]} for delete events.
#
# Masked fields (audit_stream.masking) are compared as keyed digests: `snapshot`
# and `before` carry them in place of the values (a folded change keeps them in
# mask_digests; a change folded before a field was masked has none, and its
# clear value is never read), and the diff and snapshot written show the mask.
_FOLD_SQL = """
WITH batch AS (
    SELECT e.pgh_id, {object_id} AS object_id, e.pgh_label, {context_id} AS pgh_context_id,
           e.pgh_created_at, {snapshot} AS snapshot,
           {transaction}
    FROM {table} AS e
    {in_interval}
    ORDER BY e.pgh_id
    LIMIT %(limit)s
),
with_before AS (
    SELECT b.*,
           CASE WHEN b.object_id IS NOT NULL THEN coalesce(
               lag(b.snapshot) OVER (PARTITION BY b.object_id ORDER BY b.pgh_id),
               (SELECT {before} FROM audit_stream_change AS c
                WHERE c.event_table = %(event_table)s AND c.object_id = b.object_id
                ORDER BY c.event_id DESC LIMIT 1),
               -- Folded before the table was renamed: under a former name.
               (SELECT {before} FROM audit_stream_change AS c
                WHERE c.event_table = ANY(%(former_tables)s::text[]) AND c.object_id = b.object_id
                ORDER BY c.event_id DESC LIMIT 1)
           ) END AS before
    FROM batch AS b
)
INSERT INTO audit_stream_change
    (event_table, event_id, model, object_id, label, context_id, created_at, diff, snapshot,
     transaction_id, command_id, mask_digests)
SELECT %(event_table)s, w.pgh_id, %(model)s, w.object_id, w.pgh_label, w.pgh_context_id,
       w.pgh_created_at, {diff}, {shown_snapshot}, w.transaction_id, w.command_id, {digests}
FROM with_before AS w
ORDER BY w.pgh_id
RETURNING id, event_id, (extract(epoch FROM clock_timestamp() - created_at) * 1000)::bigint
"""

# The same for the row log of ``initlogging`` (audit_stream.rowlog), which
# keeps only the changed columns of an update: the diff is read from the entry
# itself, and the object's state after each entry is its last known state
# (the previous change folded for it) patched with each entry in order
# (_audit_stream_merge, a running jsonb ||). An insert carries the whole row;
# a row that existed before logging started is known from its first change
# on, so its first snapshots hold only the columns changed so far.
#
# Tables are named as they are now (rowlog.stream_names): an entry logged
# under a former name gets the model (or name) of the table it became, and the
# last known state may have been folded under an earlier name (`aliases`). A
# column dropped by an ALTER TABLE (the DDL log) before an entry leaves the
# state from that entry on.
#
# The DDL log of the same tables is folded with it, in one pgh_id order (both
# logs draw ids from one sequence: audit_stream.rowlog.DDL_ID_SQL), so a
# schema change lands in the feed between the row changes before and after
# it. It becomes a "schema.altered" change of its table: no object id, the
# snapshot describes the table and the command, the diff is
# {column: [type before, type after]} for every column added, dropped or retyped.
#
# Masked columns (audit_stream.masking) are masked as the batch reads the
# entries (`mask_tables`: {model or table: [column, ...]}), so every diff and
# state below is built from masked values; so is the last known state (`known`),
# which may come from before a column was masked.
_LOG_ENTRIES = """
SELECT r.pgh_id, r.pgh_xid, r.cmin::text::bigint AS command_id, r.pgh_obj_id, r.pgh_label,
       r.pgh_context_id, r.pgh_created_at, r.logged_table, r.old_data, r.new_data,
       NULL::jsonb AS schema, NULL::jsonb AS schema_diff
FROM audit_stream_row_log AS r
UNION ALL
SELECT d.pgh_id, d.pgh_xid, d.cmin::text::bigint, NULL, 'schema.altered', NULL, d.pgh_created_at,
       d.logged_table, NULL, NULL,
       jsonb_build_object('table', d.logged_table, 'kind', d.pgh_label, 'statement', d.command,
                          'former_name', d.former_name, 'columns', d.columns_after),
       (SELECT coalesce(jsonb_object_agg(coalesce(a.name, b.name), jsonb_build_array(b.type, a.type)), '{}')
        FROM (SELECT c ->> 'name' AS name, c ->> 'type' AS type
              FROM jsonb_array_elements(d.columns_before) AS c) AS b
        FULL JOIN (SELECT c ->> 'name' AS name, c ->> 'type' AS type
                   FROM jsonb_array_elements(d.columns_after) AS c) AS a ON a.name = b.name
        WHERE a.type IS DISTINCT FROM b.type)
FROM audit_stream_ddl_log AS d
"""

_ROW_LOG_FOLD_SQL = """
WITH batch AS (
    SELECT e.pgh_id, e.pgh_xid, e.pgh_obj_id AS object_id, e.pgh_label, e.pgh_context_id,
           e.pgh_created_at, {old_data} AS old_data, {new_data} AS new_data,
           e.pgh_xid AS transaction_id, e.command_id,
           e.schema, e.schema_diff,
           coalesce(m.model, e.logged_table) AS model,
           coalesce(m.current_table, e.logged_table) AS current_table
    FROM ({log_entries}) AS e
    LEFT JOIN unnest(%(tables)s::text[], %(models)s::text[], %(current_tables)s::text[])
        AS m (logged_table, model, current_table)
        ON m.logged_table = e.logged_table
    {in_interval}
    ORDER BY e.pgh_id
    LIMIT %(limit)s
),
known AS (
    -- Each object's last folded state, unless the batch starts it with an insert.
    SELECT first.model, first.object_id,
           CASE WHEN first.pgh_label <> 'insert' THEN coalesce(
               (SELECT c.snapshot FROM audit_stream_change AS c
                WHERE c.model = first.model AND c.object_id = first.object_id
                ORDER BY c.event_id DESC LIMIT 1),
               (SELECT c.snapshot FROM audit_stream_change AS c
                WHERE c.model IN (SELECT a.alias
                                  FROM unnest(%(alias_of)s::text[], %(aliases)s::text[]) AS a (model, alias)
                                  WHERE a.model = first.model)
                  AND c.object_id = first.object_id
                ORDER BY c.event_id DESC LIMIT 1))
           END AS snapshot
    FROM (SELECT DISTINCT ON (b.model, b.object_id) b.model, b.object_id, b.pgh_label
          FROM batch AS b WHERE b.schema IS NULL ORDER BY b.model, b.object_id, b.pgh_id) AS first
),
with_state AS (
    SELECT b.*,
           {known} || _audit_stream_merge(coalesce(b.new_data, b.old_data)) OVER (
               PARTITION BY b.model, b.object_id ORDER BY b.pgh_id
           ) AS state
    FROM batch AS b
    JOIN known AS k ON k.model = b.model AND k.object_id IS NOT DISTINCT FROM b.object_id
    WHERE b.schema IS NULL
),
ddl AS MATERIALIZED (
    -- The columns of the batch's tables after each ALTER TABLE, by the name the table has now
    -- (the DDL log is small: read once per batch).
    SELECT t.current_table, t.pgh_id, t.pgh_xid, t.columns
    FROM (SELECT coalesce(n.current_table, d.logged_table) AS current_table, d.pgh_id, d.pgh_xid,
                 ARRAY(SELECT column_ ->> 'name' FROM jsonb_array_elements(d.columns_after) AS column_)
                     AS columns
          FROM audit_stream_ddl_log AS d
          LEFT JOIN unnest(%(tables)s::text[], %(current_tables)s::text[]) AS n (logged_table, current_table)
              ON n.logged_table = d.logged_table
          WHERE d.pgh_label IN ('alter', 'rename')) AS t
    WHERE t.current_table IN (SELECT b.current_table FROM batch AS b)
),
with_columns AS (
    -- The state, without the columns the table no longer had when the entry was written.
    SELECT w.*,
           CASE WHEN now_.columns IS NULL THEN w.state
                ELSE (SELECT coalesce(jsonb_object_agg(s.key, s.value), '{}')
                      FROM jsonb_each(w.state) AS s WHERE s.key = ANY(now_.columns))
           END AS current_state
    FROM with_state AS w
    LEFT JOIN LATERAL (
        SELECT ddl.columns FROM ddl
        WHERE ddl.current_table = w.current_table AND ddl.pgh_xid < w.pgh_xid
        ORDER BY ddl.pgh_id DESC LIMIT 1
    ) AS now_ ON true
)
INSERT INTO audit_stream_change
    (event_table, event_id, model, object_id, label, context_id, created_at, diff, snapshot,
     transaction_id, command_id)
SELECT 'audit_stream_row_log', w.pgh_id, w.model, w.object_id, w.pgh_label, w.pgh_context_id,
       w.pgh_created_at,
       CASE w.pgh_label
           WHEN 'insert' THEN _audit_stream_diff(NULL, w.new_data, false)
           WHEN 'delete' THEN _audit_stream_diff(NULL, w.old_data, true)
           ELSE (SELECT jsonb_object_agg(n.key, jsonb_build_array(w.old_data -> n.key, n.value))
                 FROM jsonb_each(w.new_data) AS n)
       END,
       CASE WHEN w.pgh_label = 'delete' THEN w.old_data ELSE w.current_state END,
       w.transaction_id, w.command_id
FROM with_columns AS w
UNION ALL
SELECT 'audit_stream_ddl_log', s.pgh_id, s.model, NULL, s.pgh_label, NULL, s.pgh_created_at,
       s.schema_diff, s.schema, s.transaction_id, s.command_id
FROM batch AS s
WHERE s.schema IS NOT NULL
ORDER BY 2
RETURNING id, event_id, (extract(epoch FROM clock_timestamp() - created_at) * 1000)::bigint
""".replace("{log_entries}", _LOG_ENTRIES)


@dataclass
class FoldResult:
    """What one call of :func:`fold` did."""

    event_table: str
    folded: int = 0
    caught_up: bool = True
    busy: bool = False  # another fold of the same table held the checkpoint
    endpoints: set[int] = field(default_factory=set)  # webhook endpoints owed new messages
    lag_ms: int | None = None  # from the oldest folded event's transaction start to its fold


def fold(
    event_table: str,
    *,
    lane: int | None = None,
    using: str = DEFAULT_DB_ALIAS,
    batch_size: int | None = None,
    max_seconds: float = 30.0,
    on_messages: Callable[[set[int]], object] | None = None,
) -> FoldResult:
    """Fold the committed, unfolded events of one event table (or the row log) into ``Change`` rows.

    Works in batches of ``batch_size`` events, one transaction each, until the
    table is caught up and stays quiet for ``FOLD_LINGER`` seconds, or
    ``max_seconds`` have passed (then ``caught_up`` is false and the caller
    should fold again). When idle, re-arms the wake-up flag (unless in
    poll-only mode) and checks once more for events committed meanwhile.

    ``on_messages(endpoint_ids)`` is called after each batch that recorded
    webhook messages has committed, so deliveries start while the fold goes on.

    A checkpoint restored from another cluster is recovered first (one
    transaction, see :mod:`audit_stream.stream.checkpoint`); its events count
    in ``folded``.

    ``lane``: fold only this lane of a table folded in several
    (:mod:`audit_stream.stream.lanes`; a worker's share); ``None`` folds every
    lane in turn. A lane the table does not have (the number of lanes changed
    since the task was sent) has nothing to fold. When ``FOLD_LANES`` gives the
    table another number of lanes than its checkpoint records, the table is
    re-laned first (``busy`` if another fold holds one of its lanes meanwhile).
    """
    model = _event_model(event_table)
    _check_outside_writes(using)
    batch_size = batch_size or config.fold_batch_size()
    # The row log names each table's model: looked up once per fold, not per batch.
    model_names = rowlog.stream_names(using=using) if event_table == rowlog.ROW_LOG_TABLE else None
    result = FoldResult(event_table)
    count = _lay_out(model, using, model_names, result, on_messages)
    if count is None:
        result.busy = True  # another fold holds a lane that the change of lanes needs
        return result
    deadline = time.monotonic() + max_seconds
    for each in range(count) if lane is None else [lane] if lane < count else []:
        _fold_lane(model, each, using, batch_size, model_names, result, on_messages, deadline)
    return result


def _fold_lane(
    model, lane: int, using: str, batch_size: int, model_names, result: FoldResult, on_messages, deadline
) -> None:
    """The body of :func:`fold` for one lane: batches, then lingering, until idle or out of time."""
    event_table = model._meta.db_table
    if _is_foreign(event_table, lane, using) and not _recover(
        model, using, model_names, result, on_messages, lane
    ):
        result.busy = True  # another fold is recovering it
        return
    while True:
        folded, caught_up, busy, endpoints, lag_ms = _fold_batch(model, using, batch_size, model_names, lane)
        result.folded += folded
        result.endpoints |= endpoints
        if endpoints and on_messages is not None:
            on_messages(endpoints)
        if lag_ms is not None:
            result.lag_ms = max(result.lag_ms or 0, lag_ms)
        if busy:
            result.busy = True
            return
        if not caught_up:
            if time.monotonic() > deadline:
                result.caught_up = False
                return
            continue
        # Caught up but out of time: let the task end (and be enqueued again)
        # so other tables get the worker and the run is recorded.
        if time.monotonic() > deadline and wakeup.has_work(event_table, lane=lane, using=using):
            result.caught_up = False
            return
        # Caught up. While writes keep coming, keep folding without being woken:
        # look for work every few milliseconds for LINGER seconds before going
        # idle. Under steady writes this keeps NOTIFY (and its commit lock) off
        # the write path almost entirely.
        if _linger(event_table, lane, using, deadline):
            continue
        # Idle: let the next writer wake us, then look again for writers that
        # committed while we were re-arming (their NOTIFY was skipped).
        if config.notify():
            wakeup.arm(using=using)
        if not wakeup.has_work(event_table, lane=lane, using=using):
            return


def _linger(event_table: str, lane: int, using: str, deadline: float) -> bool:
    """Whether work arrives within ``FOLD_LINGER`` seconds (checked every 5 ms)."""
    until = min(time.monotonic() + config.fold_linger(), deadline)
    while time.monotonic() < until:
        time.sleep(0.005)
        if wakeup.has_work(event_table, lane=lane, using=using):
            return True
    return False


def _lay_out(model, using: str, model_names, result: FoldResult, on_messages) -> int | None:
    """The number of lanes to fold ``model``'s table in, after re-laning it if the setting changed.

    A table never folded gets the checkpoint rows of its configured lanes. If
    its rows record another number, each lane restored from another cluster is
    recovered first (under the recorded lanes), then the table is re-laned.
    None: another fold holds a lane meanwhile (try again later).
    """
    table = model._meta.db_table
    wanted = lanes.configured(table)
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        recorded = checkpoint.ensure(cursor, table, wanted)
    if recorded == wanted:
        return recorded
    for lane in range(recorded):
        foreign = _is_foreign(table, lane, using)
        if foreign and not _recover(model, using, model_names, result, on_messages, lane):
            return None
    return _relane(model, using, model_names, wanted, result, on_messages)


def _relane(model, using: str, model_names, wanted: int, result: FoldResult, on_messages) -> int | None:
    """Fold ``model``'s table in ``wanted`` lanes from now on; None if another fold holds one of its lanes.

    One transaction: every lane's checkpoint is locked; one snapshot is taken,
    later than every lane's; each lane folds the rest of its half-folded
    interval (if any) and then every event of its own up to that snapshot, as
    it always does (hashing with the old number of lanes); then the rows are
    replaced by ``wanted`` lanes that all start at that snapshot. Whatever each
    lane had folded, every event is folded once, by its old lane before the
    change or by its new one after it.
    """
    table = model._meta.db_table
    connection = connections[using]
    with transaction.atomic(using=using), connection.cursor() as cursor:
        old = checkpoint.claim_all(cursor, table)
        if old is None or any(claim.foreign for claim in old):
            return None  # a lane is busy, or was restored from another cluster meanwhile
        if old[0].lanes == wanted:
            return wanted  # another fold re-laned it meanwhile
        target, high = _take_target(cursor, connection, table)
        rows = []
        for claim in old:
            interval = {
                "floor": claim.floor,
                "limit": None,
                "window_end": 2**63 - 1,  # the whole interval at once
                **lanes.params(claim.lane, claim.lanes),
            }
            done = claim.done
            if claim.target is not None:  # the rest of a half-folded interval
                interval.update(done=done, target=claim.target, position=claim.position)
                cursor.execute(*_batch_sql(model, connection, claim.names, _IN_BATCH, interval, model_names))
                rows += cursor.fetchall()
                done = claim.target
            position = _first_position(cursor, connection, table, done, target, claim.floor)
            if position is not None:
                interval.update(done=done, target=target, position=position)
                cursor.execute(*_batch_sql(model, connection, claim.names, _IN_BATCH, interval, model_names))
                rows += cursor.fetchall()
        changes = [change_id for change_id, _, _ in rows]
        endpoints = messages.record(cursor, changes)
        sink_messages.record(cursor, changes)
        checkpoint.relaned(cursor, table, old, wanted, target, high, len(rows))
    result.folded += len(rows)
    result.endpoints |= endpoints
    if endpoints and on_messages is not None:
        on_messages(endpoints)
    return wanted


def fold_all(
    *, using: str = DEFAULT_DB_ALIAS, max_seconds: float = float("inf"), **kwargs
) -> list[FoldResult]:
    """Fold every event table, every lane in turn, until each is caught up (in-process: tests,
    benchmarks, scripts)."""
    return [fold(table, using=using, max_seconds=max_seconds, **kwargs) for table in tracking.stream_tables()]


def _check_outside_writes(using: str) -> None:
    """Refuse to fold inside a transaction that has written.

    Its own uncommitted events are visible in its snapshots or not depending on
    other transactions' timing, so folding there could record them as folded
    and then skip them. Celery tasks and scripts fold outside any transaction.
    """
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT pg_current_xact_id_if_assigned() IS NOT NULL")
        if cursor.fetchone()[0]:
            raise RuntimeError(
                "fold() cannot run inside a transaction that has already written: call it outside"
                " transaction.atomic() (in tests, use @pytest.mark.django_db(transaction=True))."
            )


def _event_model(event_table: str):
    if event_table == rowlog.ROW_LOG_TABLE:
        from audit_stream.models import RowLog

        return RowLog
    try:
        return tracking._event_models[event_table]
    except KeyError:
        raise ValueError(
            f"{event_table!r} is not an event table; known: {', '.join(tracking.stream_tables())}."
        ) from None


def _fold_batch(
    model, using: str, batch_size: int, model_names: rowlog.StreamNames | None, lane: int = 0
) -> tuple[int, bool, bool, set[int], int | None]:
    """Fold one batch of one lane in one transaction. Returns (folded, caught_up, busy, endpoints, lag_ms).

    ``model_names``: how the row log names its tables (None for event tables).
    """
    table = model._meta.db_table
    connection = connections[using]
    with transaction.atomic(using=using), connection.cursor() as cursor:
        found = checkpoint.claim(cursor, table, lane, lanes=lanes.configured(table))
        if found is None or found.foreign:  # busy, or restored meanwhile (the next fold recovers it)
            return 0, False, True, set(), None
        done, target, position, high = found.done, found.target, found.position, found.high
        if target is None:
            target, high = _take_target(cursor, connection, table)
            position = _first_position(cursor, connection, table, done, target, found.floor)
            if position is None:  # nothing in the interval: `target` becomes `done`
                cursor.execute(
                    "UPDATE audit_stream_checkpoint SET snapshot = %s, high = %s, updated_at = now()"
                    " WHERE event_table = %s AND lane = %s",
                    [target, high, table, lane],
                )
                return 0, True, False, set(), None

        # Every event of the interval has an id up to `high` (unknown for a checkpoint of before 0011).
        # A lane's events are about one id in `lanes`: its window spans that many more ids.
        span = batch_size * found.lanes
        window_end = min(position + span, high) if high is not None else 2**63 - 1
        interval = {
            "done": done,
            "target": target,
            "position": position,
            "window_end": window_end,
            "floor": found.floor,
            "limit": batch_size,
            # The recorded number of lanes, whatever the setting says now.
            **lanes.params(found.lane, found.lanes),
        }
        cursor.execute(*_batch_sql(model, connection, found.names, _IN_BATCH, interval, model_names))
        rows = cursor.fetchall()
        ids = [event_id for _, event_id, _ in rows]
        lag_ms = max((lag for _, _, lag in rows), default=None)
        # The messages owed to webhook endpoints commit with their changes.
        endpoints = messages.record(cursor, [change_id for change_id, _, _ in rows])
        sink_messages.record(cursor, [change_id for change_id, _, _ in rows])  # and those owed to sinks
        caught_up = len(ids) < batch_size
        next_position = max(ids, default=position)
        if caught_up and high is not None and window_end < high:  # the window ended before the interval
            next_position = window_end if ids else _next_position(cursor, connection, table, interval)
            caught_up = next_position is None
        if caught_up:
            # The whole interval is folded: `target` becomes `done`; the next starts above `floor`.
            cursor.execute(
                "UPDATE audit_stream_checkpoint SET snapshot = %s, target = NULL, position = floor,"
                " high = %s, folded = folded + %s, updated_at = now() WHERE event_table = %s AND lane = %s",
                [target, high, len(ids), table, lane],
            )
        else:
            cursor.execute(
                "UPDATE audit_stream_checkpoint SET target = %s, position = %s, high = %s,"
                " folded = folded + %s, updated_at = now() WHERE event_table = %s AND lane = %s",
                [target, next_position, high, len(ids), table, lane],
            )
        return len(ids), caught_up, False, endpoints, lag_ms


def _stream_tables(table: str) -> list[str]:
    """The tables one stream reads: the event table; the row log's also carries the DDL log
    (whose ids come from the same sequence)."""
    return [table, rowlog.DDL_LOG_TABLE] if table == rowlog.ROW_LOG_TABLE else [table]


def _take_target(cursor, connection, table: str) -> tuple[str, int | None]:
    """A new interval's ``target`` snapshot, and ``high``: every event committed in it has an id
    up to it (for a recovery)."""
    quoted = [connection.ops.quote_name(t) for t in _stream_tables(table)]
    highest = ", ".join(f"(SELECT max(pgh_id) FROM {q})" for q in quoted)
    cursor.execute(f"SELECT pg_current_snapshot()::text, greatest({highest})")
    return cursor.fetchone()


def _first_position(
    cursor, connection, table: str, done: str, target: str, floor: int, above: int = 0
) -> int | None:
    """Just below the lowest pgh_id of the interval from ``done`` to ``target`` past ``above``, any lane
    (None: nothing there)."""
    quoted = [connection.ops.quote_name(t) for t in _stream_tables(table)]
    firsts = [_first_id(cursor, q, done, target, floor, above) for q in quoted]
    return min((f for f in firsts if f is not None), default=None)


def _next_position(cursor, connection, table: str, interval: dict) -> int | None:
    """Past an empty window: just below the interval's next id after it (None: the interval is done)."""
    return _first_position(
        cursor,
        connection,
        table,
        interval["done"],
        interval["target"],
        interval["floor"],
        interval["window_end"],
    )


def _batch_sql(model, connection, names: list[str], in_interval: str, interval: dict, model_names):
    """The fold query of ``model``'s table for the events ``in_interval`` selects, and its parameters."""
    table = model._meta.db_table
    if table == rowlog.ROW_LOG_TABLE:  # always one lane
        mask_tables = masking.row_log_columns(model_names.models)
        entry = masking.MaskSql(
            columns="(%(mask_tables)s::jsonb -> coalesce(m.model, e.logged_table))",
            key="%(mask_pads)s",
            hashed=masking.hashed(),
        )
        known = masking.MaskSql(
            columns="(%(mask_tables)s::jsonb -> b.model)", key="%(mask_pads)s", hashed=masking.hashed()
        )
        sql = _ROW_LOG_FOLD_SQL.replace("{in_interval}", in_interval)
        for column in ("old_data", "new_data"):
            sql = sql.replace(f"{{{column}}}", entry.masked(f"e.{column}") if mask_tables else f"e.{column}")
        # The last known state may hold values folded before their column was masked.
        state = "coalesce(k.snapshot, '{}')"
        sql = sql.replace("{known}", known.remasked(state) if mask_tables else state)
        return (
            sql,
            {
                **interval,
                **model_names.params(),
                "mask_tables": json.dumps(mask_tables),
                "mask_pads": masking.pads() if mask_tables else None,
            },
        )
    masked = masking.columns_of(model)
    mask = masking.MaskSql(columns="%(mask_columns)s::jsonb", key="%(mask_pads)s", hashed=masking.hashed())
    snapshot = "to_jsonb(e) - %(pgh_columns)s::text[]"
    diff = "_audit_stream_diff(w.before, w.snapshot, w.pgh_label = ANY(%(delete_labels)s::text[]))"
    return (
        _FOLD_SQL.format(
            snapshot=mask.digested(snapshot) if masked else snapshot,
            before=mask.before("c") if masked else "c.snapshot",
            diff=mask.shown_pairs(diff) if masked else diff,
            shown_snapshot=mask.shown("w.snapshot") if masked else "w.snapshot",
            digests=mask.digests("w.snapshot") if masked else "NULL::jsonb",
            in_interval=f"{in_interval}\n      AND {lanes.in_lane(model)}",
            transaction=_TRANSACTION_COLUMNS,
            table=connection.ops.quote_name(table),
            # Event models may be declared without obj_fk or context_fk.
            object_id="e.pgh_obj_id::text" if model._pgh_has_obj else "NULL::text",
            context_id="e.pgh_context_id" if model._pgh_has_context else "NULL::uuid",
        ),
        {
            **interval,
            "pgh_columns": _PGH_COLUMNS,
            "event_table": table,
            "former_tables": names[1:],
            "model": model.pgh_tracked_model._meta.label_lower,
            "delete_labels": events.delete_labels(model),
            "mask_columns": json.dumps(masked),
            "mask_pads": masking.pads() if masked else None,
        },
    )


def _is_foreign(event_table: str, lane: int, using: str) -> bool:
    with connections[using].cursor() as cursor:
        return checkpoint.is_foreign(cursor, event_table, lane)


def _recover(model, using: str, model_names, result: FoldResult, on_messages, lane: int = 0) -> bool:
    """Recover a checkpoint's lane restored from another cluster; False if another fold holds it.

    One REPEATABLE READ transaction: the events to fold and the new snapshot
    are read in one snapshot, so an event committed meanwhile is left to the
    next fold, and none is folded twice or skipped (see checkpoint.RECOVERY_INTERVAL).
    """
    table = model._meta.db_table
    connection = connections[using]
    if connection.in_atomic_block:
        raise RuntimeError(
            "Recovering a restored checkpoint needs a transaction of its own:"
            " fold outside transaction.atomic()."
        )
    try:
        with transaction.atomic(using=using), connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            found = checkpoint.claim(cursor, table, lane)
            if found is None:
                return False
            if found.foreign:
                interval = {
                    **checkpoint.recovery_params(cursor, found),
                    "limit": None,
                    **lanes.params(found.lane, found.lanes),
                }
                cursor.execute(
                    *_batch_sql(
                        model, connection, found.names, checkpoint.RECOVERY_INTERVAL, interval, model_names
                    )
                )
                rows = cursor.fetchall()
                result.endpoints |= messages.record(cursor, [change_id for change_id, _, _ in rows])
                result.folded += len(rows)
                checkpoint.recovered(
                    cursor, table, connection.ops.quote_name(table), found.floor, len(rows), lane
                )
    except OperationalError as exc:  # the checkpoint moved after our snapshot: another fold has it
        if getattr(exc.__cause__, "sqlstate", None) == "40001":
            return False
        raise
    if result.endpoints and on_messages is not None:
        on_messages(result.endpoints)
    return True


def _first_id(cursor, quoted_table: str, done: str, target: str, floor: int, above: int = 0) -> int | None:
    """Just below the lowest pgh_id (above ``above``) of the interval from ``done`` to ``target``.

    None: the interval has no event there.
    """
    params = {"done": done, "target": target, "floor": floor, "above": above}
    cursor.execute(_FIRST_ID_SQL.format(table=quoted_table), params)
    first = cursor.fetchone()[0]
    return None if first is None else first - 1
