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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from audit_stream import config, rowlog, tracking
from audit_stream.stream import unfolded, wakeup
from audit_stream.webhooks import messages

__all__ = ["FoldResult", "fold", "fold_all"]

# Columns of an event row that are not the tracked object's state.
_PGH_COLUMNS = ["pgh_id", "pgh_created_at", "pgh_label", "pgh_xid", "pgh_obj_id", "pgh_context_id"]

# The events of one batch: the interval's (audit_stream.stream.unfolded), after
# `position`: the last pgh_id of the previous batch of the interval, or, for
# its first batch, just below the interval's lowest pgh_id (_FIRST_ID_SQL).
# The primary key walks from there; nothing older is read, whatever vacuum
# has or has not done.
_IN_BATCH = f"""WHERE {unfolded.IN_INTERVAL}
      AND e.pgh_id > %(position)s"""

# The lowest pgh_id of an interval, found through the pgh_xid index: one
# range for the transactions that started after `done`, one list for those
# in progress then. `+ 0` keeps the planner from answering min() by walking
# the primary key from the table's first row and testing each.
_FIRST_ID_SQL = f"""
SELECT least(
    (SELECT min(e.pgh_id + 0) FROM {{table}} AS e
     WHERE {unfolded.NEW}
       AND e.pgh_xid < pg_snapshot_xmax(%(target)s::pg_snapshot)::text::bigint
       AND pg_visible_in_snapshot(e.pgh_xid::text::xid8, %(target)s::pg_snapshot)),
    (SELECT min(e.pgh_id + 0) FROM {{table}} AS e
     WHERE {unfolded.IN_PROGRESS}
       AND pg_visible_in_snapshot(e.pgh_xid::text::xid8, %(target)s::pg_snapshot))
)
"""

# A batch of an event table. For each event, `before` is the object's previous
# state: the previous event of the object in this batch, else the last change
# already folded for it. _audit_stream_diff (audit_stream.triggers.DIFF_FUNCTION)
# gives {column: [old, new]} for the columns that differ (all of them for an
# object's first event), and {column: [old, null]} for delete events.
_FOLD_SQL = """
WITH batch AS (
    SELECT e.pgh_id, {object_id} AS object_id, e.pgh_label, {context_id} AS pgh_context_id,
           e.pgh_created_at, to_jsonb(e) - %(pgh_columns)s::text[] AS snapshot
    FROM {table} AS e
    {in_interval}
    ORDER BY e.pgh_id
    LIMIT %(limit)s
),
with_before AS (
    SELECT b.*,
           CASE WHEN b.object_id IS NOT NULL THEN coalesce(
               lag(b.snapshot) OVER (PARTITION BY b.object_id ORDER BY b.pgh_id),
               (SELECT c.snapshot FROM audit_stream_change AS c
                WHERE c.event_table = %(event_table)s AND c.object_id = b.object_id
                ORDER BY c.event_id DESC LIMIT 1)
           ) END AS before
    FROM batch AS b
)
INSERT INTO audit_stream_change
    (event_table, event_id, model, object_id, label, context_id, created_at, diff, snapshot)
SELECT %(event_table)s, w.pgh_id, %(model)s, w.object_id, w.pgh_label, w.pgh_context_id,
       w.pgh_created_at,
       _audit_stream_diff(w.before, w.snapshot, w.pgh_label = ANY(%(delete_labels)s::text[])),
       w.snapshot
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
_ROW_LOG_FOLD_SQL = """
WITH batch AS (
    SELECT e.pgh_id, e.pgh_obj_id AS object_id, e.pgh_label, e.pgh_context_id, e.pgh_created_at,
           e.old_data, e.new_data,
           coalesce(m.model, e.logged_table) AS model
    FROM audit_stream_row_log AS e
    LEFT JOIN unnest(%(tables)s::text[], %(models)s::text[]) AS m (logged_table, model)
        ON m.logged_table = e.logged_table
    {in_interval}
    ORDER BY e.pgh_id
    LIMIT %(limit)s
),
known AS (
    -- Each object's last folded state, unless the batch starts it with an insert.
    SELECT first.model, first.object_id,
           CASE WHEN first.pgh_label <> 'insert' THEN
               (SELECT c.snapshot FROM audit_stream_change AS c
                WHERE c.model = first.model AND c.object_id = first.object_id
                ORDER BY c.event_id DESC LIMIT 1)
           END AS snapshot
    FROM (SELECT DISTINCT ON (b.model, b.object_id) b.model, b.object_id, b.pgh_label
          FROM batch AS b ORDER BY b.model, b.object_id, b.pgh_id) AS first
),
with_state AS (
    SELECT b.*,
           coalesce(k.snapshot, '{}') || _audit_stream_merge(coalesce(b.new_data, b.old_data)) OVER (
               PARTITION BY b.model, b.object_id ORDER BY b.pgh_id
           ) AS state
    FROM batch AS b
    JOIN known AS k ON k.model = b.model AND k.object_id IS NOT DISTINCT FROM b.object_id
)
INSERT INTO audit_stream_change
    (event_table, event_id, model, object_id, label, context_id, created_at, diff, snapshot)
SELECT 'audit_stream_row_log', w.pgh_id, w.model, w.object_id, w.pgh_label, w.pgh_context_id,
       w.pgh_created_at,
       CASE w.pgh_label
           WHEN 'insert' THEN _audit_stream_diff(NULL, w.new_data, false)
           WHEN 'delete' THEN _audit_stream_diff(NULL, w.old_data, true)
           ELSE (SELECT jsonb_object_agg(n.key, jsonb_build_array(w.old_data -> n.key, n.value))
                 FROM jsonb_each(w.new_data) AS n)
       END,
       CASE WHEN w.pgh_label = 'delete' THEN w.old_data ELSE w.state END
FROM with_state AS w
ORDER BY w.pgh_id
RETURNING id, event_id, (extract(epoch FROM clock_timestamp() - created_at) * 1000)::bigint
""".replace("{in_interval}", _IN_BATCH)


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
    """
    model = _event_model(event_table)
    _check_outside_writes(using)
    batch_size = batch_size or config.fold_batch_size()
    # The row log names each table's model: looked up once per fold, not per batch.
    model_names = rowlog.models_by_table(using=using) if event_table == rowlog.ROW_LOG_TABLE else None
    result = FoldResult(event_table)
    deadline = time.monotonic() + max_seconds
    while True:
        folded, caught_up, busy, endpoints, lag_ms = _fold_batch(model, using, batch_size, model_names)
        result.folded += folded
        result.endpoints |= endpoints
        if endpoints and on_messages is not None:
            on_messages(endpoints)
        if lag_ms is not None:
            result.lag_ms = max(result.lag_ms or 0, lag_ms)
        if busy:
            result.busy = True
            return result
        if not caught_up:
            if time.monotonic() > deadline:
                result.caught_up = False
                return result
            continue
        if time.monotonic() > deadline:
            # Caught up but out of time: let the task end (and be enqueued again)
            # so other tables get the worker and the run is recorded.
            result.caught_up = not wakeup.has_work(event_table, using=using)
            if not result.caught_up:
                return result
        # Caught up. While writes keep coming, keep folding without being woken:
        # look for work every few milliseconds for LINGER seconds before going
        # idle. Under steady writes this keeps NOTIFY (and its commit lock) off
        # the write path almost entirely.
        if _linger(event_table, using, deadline):
            continue
        # Idle: let the next writer wake us, then look again for writers that
        # committed while we were re-arming (their NOTIFY was skipped).
        if config.notify():
            wakeup.arm(using=using)
        if not wakeup.has_work(event_table, using=using):
            return result


def _linger(event_table: str, using: str, deadline: float) -> bool:
    """Whether work arrives within ``FOLD_LINGER`` seconds (checked every 5 ms)."""
    until = min(time.monotonic() + config.fold_linger(), deadline)
    while time.monotonic() < until:
        time.sleep(0.005)
        if wakeup.has_work(event_table, using=using):
            return True
    return False


def fold_all(
    *, using: str = DEFAULT_DB_ALIAS, max_seconds: float = float("inf"), **kwargs
) -> list[FoldResult]:
    """Fold every event table until each is caught up (in-process: tests, benchmarks, scripts)."""
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


def _delete_labels(model) -> list[str]:
    from audit_stream.events import DatabaseEvent

    return [
        event.label
        for event in model.pgh_events
        if isinstance(event, DatabaseEvent) and event.operations == ["DELETE"]
    ]


def _fold_batch(
    model, using: str, batch_size: int, model_names: dict[str, str] | None
) -> tuple[int, bool, bool, set[int], int | None]:
    """Fold one batch in one transaction. Returns (folded, caught_up, busy, endpoints, lag_ms).

    ``model_names``: the row log's ``{"schema.table": "app_label.model"}`` (None for event tables).
    """
    table = model._meta.db_table
    connection = connections[using]
    with transaction.atomic(using=using), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audit_stream_checkpoint (event_table, snapshot, position, folded, updated_at)"
            " VALUES (%s, '1:1:', 0, 0, now()) ON CONFLICT (event_table) DO NOTHING",
            [table],
        )
        cursor.execute(
            "SELECT snapshot, target, position FROM audit_stream_checkpoint"
            " WHERE event_table = %s FOR UPDATE SKIP LOCKED",
            [table],
        )
        row = cursor.fetchone()
        if row is None:
            return 0, False, True, set(), None
        done, target, position = row
        if target is None:
            cursor.execute("SELECT pg_current_snapshot()::text")
            target = cursor.fetchone()[0]
            position = _first_id(cursor, connection.ops.quote_name(table), done, target)
            if position is None:  # nothing in the interval: `target` becomes `done`
                cursor.execute(
                    "UPDATE audit_stream_checkpoint SET snapshot = %s, updated_at = now()"
                    " WHERE event_table = %s",
                    [target, table],
                )
                return 0, True, False, set(), None

        interval = {"done": done, "target": target, "position": position, "limit": batch_size}
        if table == rowlog.ROW_LOG_TABLE:
            cursor.execute(
                _ROW_LOG_FOLD_SQL,
                {**interval, "tables": list(model_names), "models": list(model_names.values())},
            )
        else:
            cursor.execute(
                _FOLD_SQL.format(
                    in_interval=_IN_BATCH,
                    table=connection.ops.quote_name(table),
                    # Event models may be declared without obj_fk or context_fk.
                    object_id="e.pgh_obj_id::text" if model._pgh_has_obj else "NULL::text",
                    context_id="e.pgh_context_id" if model._pgh_has_context else "NULL::uuid",
                ),
                {
                    **interval,
                    "pgh_columns": _PGH_COLUMNS,
                    "event_table": table,
                    "model": model.pgh_tracked_model._meta.label_lower,
                    "delete_labels": _delete_labels(model),
                },
            )
        rows = cursor.fetchall()
        ids = [event_id for _, event_id, _ in rows]
        lag_ms = max((lag for _, _, lag in rows), default=None)
        # The messages owed to webhook endpoints commit with their changes.
        endpoints = messages.record(cursor, [change_id for change_id, _, _ in rows])
        caught_up = len(ids) < batch_size
        if caught_up:
            # The whole interval is folded: `target` becomes `done`.
            cursor.execute(
                "UPDATE audit_stream_checkpoint SET snapshot = %s, target = NULL, position = 0,"
                " folded = folded + %s, updated_at = now() WHERE event_table = %s",
                [target, len(ids), table],
            )
        else:
            cursor.execute(
                "UPDATE audit_stream_checkpoint SET target = %s, position = %s,"
                " folded = folded + %s, updated_at = now() WHERE event_table = %s",
                [target, max(ids), len(ids), table],
            )
        return len(ids), caught_up, False, endpoints, lag_ms


def _first_id(cursor, quoted_table: str, done: str, target: str) -> int | None:
    """Just below the lowest pgh_id of the interval from ``done`` to ``target`` (None: it is empty)."""
    cursor.execute(_FIRST_ID_SQL.format(table=quoted_table), {"done": done, "target": target})
    first = cursor.fetchone()[0]
    return None if first is None else first - 1
