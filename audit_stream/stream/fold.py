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
in one transaction that folds every lane up to one snapshot first
(:mod:`audit_stream.stream.relane`). A fold of a whole table folds each lane
in turn, then lingers on all of them, folding whichever gets work.

The queries live beside this module: the batch's (:mod:`~audit_stream.stream.batch`),
where an interval starts (:mod:`~audit_stream.stream.interval`), and the
recovery of a restored checkpoint (:mod:`~audit_stream.stream.recovery`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from audit_stream import config, registry, rowlog
from audit_stream.sinks import messages as sink_messages
from audit_stream.stream import batch, checkpoint, interval, lanes, recovery, relane, wakeup
from audit_stream.webhooks import messages

__all__ = ["FoldResult", "fold", "fold_all"]

# What a lane's drain (_drain) ended with.
_CAUGHT_UP, _BUSY, _LATE = "caught up", "busy", "late"


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
    (:mod:`audit_stream.stream.lanes`; a worker's share: it lingers on its lane
    alone). ``None`` folds every lane: each in turn until caught up, then,
    while lingering, whichever lane gets work, so one call keeps up with
    writes to any lane. A lane another fold holds is left to it (``busy``):
    that fold looks for its lane's work before it ends. A lane the table does
    not have (the number of lanes changed since the task was sent) has nothing
    to fold. When ``FOLD_LANES`` gives the table another number of lanes than
    its checkpoint records, the table is re-laned first (``busy`` if another
    fold holds one of its lanes meanwhile).
    """
    model = _event_model(event_table)
    _check_outside_writes(using)
    batch_size = batch_size or config.fold_batch_size()
    # The row log names each table's model: looked up once per fold, not per batch.
    model_names = rowlog.stream_names(using=using) if event_table == rowlog.ROW_LOG_TABLE else None
    result = FoldResult(event_table)
    record = _recorder(result, on_messages)
    count = relane.lay_out(model, using, model_names, record)
    if count is None:
        result.busy = True  # another fold holds a lane that the change of lanes needs
        return result
    deadline = time.monotonic() + max_seconds
    among = range(count) if lane is None else [lane] if lane < count else []
    _fold_lanes(model, among, using, batch_size, model_names, result, record, deadline)
    return result


def _recorder(result: FoldResult, on_messages) -> recovery.Record:
    """What each committed step of a fold reports: added to ``result``, endpoints to ``on_messages``."""

    def record(folded: int, endpoints: set[int]) -> None:
        result.folded += folded
        result.endpoints |= endpoints
        if endpoints and on_messages is not None:
            on_messages(endpoints)

    return record


def _fold_lanes(
    model,
    among: Iterable[int],
    using: str,
    batch_size: int,
    model_names,
    result: FoldResult,
    record: recovery.Record,
    deadline: float,
) -> None:
    """The body of :func:`fold`: drain the lanes ``among`` in turn, then linger on all of them, until
    idle or out of time.

    Each lane is drained by batches until caught up (:func:`_drain`). Then,
    while writes keep coming, the fold looks for work in every lane every few
    milliseconds for ``FOLD_LINGER`` seconds and drains whichever lane has
    some: under steady writes this keeps NOTIFY (and its commit lock) off the
    write path almost entirely, however many lanes the table has. A lane found
    held by another fold is dropped from this call: its holder folds it, and
    looks for its work once more before it ends.
    """
    table = model._meta.db_table
    among = list(among)
    todo, checked = list(among), set()
    while True:
        for lane in todo:
            if lane not in checked:  # a restored checkpoint is recovered before anything else
                checked.add(lane)
                if recovery.is_foreign(table, lane, using) and not recovery.recover(
                    model, using, model_names, record, lane
                ):
                    result.busy = True  # another fold is recovering it
                    among.remove(lane)
                    continue
            ended = _drain(model, lane, using, batch_size, model_names, result, record, deadline)
            if ended == _BUSY:
                result.busy = True
                among.remove(lane)
            elif ended == _LATE:
                result.caught_up = False
                return
        if not among:
            return
        # Caught up but out of time: let the task end (and be enqueued again)
        # so other tables get the worker and the run is recorded.
        if time.monotonic() > deadline and _with_work(table, among, using):
            result.caught_up = False
            return
        todo = _linger(table, among, using, deadline)
        if todo:
            continue
        # Idle: let the next writer wake us, then look again for writers that
        # committed while we were re-arming (their NOTIFY was skipped).
        if config.notify():
            wakeup.arm(using=using)
        todo = _with_work(table, among, using)
        if not todo:
            return


def _drain(
    model,
    lane: int,
    using: str,
    batch_size: int,
    model_names,
    result: FoldResult,
    record: recovery.Record,
    deadline: float,
) -> str:
    """Fold batches of one lane until it is caught up (:data:`_CAUGHT_UP`), another fold holds it
    (:data:`_BUSY`) or the deadline has passed with more to fold (:data:`_LATE`)."""
    while True:
        folded, caught_up, busy, endpoints, lag_ms = _fold_batch(model, using, batch_size, model_names, lane)
        record(folded, endpoints)
        if lag_ms is not None:
            result.lag_ms = max(result.lag_ms or 0, lag_ms)
        if busy:
            return _BUSY
        if caught_up:
            return _CAUGHT_UP
        if time.monotonic() > deadline:
            return _LATE


def _with_work(event_table: str, among: list[int], using: str) -> list[int]:
    """The lanes of ``among`` with committed events not folded yet."""
    return wakeup.lanes_of(event_table, among, using=using)


def _linger(event_table: str, among: list[int], using: str, deadline: float) -> list[int]:
    """The lanes of ``among`` where work arrives within ``FOLD_LINGER`` seconds (checked every 5 ms);
    empty if none does."""
    until = min(time.monotonic() + config.fold_linger(), deadline)
    while time.monotonic() < until:
        time.sleep(0.005)
        found = _with_work(event_table, among, using)
        if found:
            return found
    return []


def fold_all(
    *, using: str = DEFAULT_DB_ALIAS, max_seconds: float = float("inf"), **kwargs
) -> list[FoldResult]:
    """Fold every event table until each is caught up (in-process: tests, benchmarks, scripts).

    The tables are folded one after another. A table folded in several lanes
    has its lanes folded at once, one thread each with its own database
    connection (closed when it ends), as that many workers would; its result
    adds theirs up. ``kwargs`` are :func:`fold`'s (``batch_size``,
    ``on_messages``, which may then be called from those threads).
    """
    _check_outside_writes(using)  # the threads' connections could not see this transaction's events
    tables = registry.stream_tables()
    return [_fold_table(table, using=using, max_seconds=max_seconds, **kwargs) for table in tables]


def _fold_table(table: str, *, using: str, **kwargs) -> FoldResult:
    """:func:`fold_all` for one table: a lane-less :func:`fold`, or one thread per lane."""
    count = lanes.configured(table)
    if count == 1:
        return fold(table, using=using, **kwargs)
    # Lay the table out (or re-lane it) once, before the threads share it.
    laid_out = FoldResult(table)
    record = _recorder(laid_out, kwargs.get("on_messages"))
    if relane.lay_out(_event_model(table), using, None, record) is None:
        laid_out.busy = True  # another fold holds a lane that the change of lanes needs
        return laid_out

    def fold_lane(lane: int) -> FoldResult:
        try:
            return fold(table, lane=lane, using=using, **kwargs)
        finally:
            connections.close_all()  # this thread's own connections

    with ThreadPoolExecutor(max_workers=count, thread_name_prefix=f"fold {table}") as pool:
        results = [laid_out, *pool.map(fold_lane, range(count))]
    total = FoldResult(table)
    for each in results:
        total.folded += each.folded
        total.caught_up = total.caught_up and each.caught_up
        total.busy = total.busy or each.busy
        total.endpoints |= each.endpoints
        if each.lag_ms is not None:
            total.lag_ms = max(total.lag_ms or 0, each.lag_ms)
    return total


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
        return registry.event_models[event_table]
    except KeyError:
        raise ValueError(
            f"{event_table!r} is not an event table; known: {', '.join(registry.stream_tables())}."
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
            target, high = interval.take_target(cursor, connection, table)
            position = interval.first_position(cursor, connection, table, done, target, found.floor)
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
        params = {
            "done": done,
            "target": target,
            "position": position,
            "window_end": window_end,
            "floor": found.floor,
            "limit": batch_size,
            # The recorded number of lanes, whatever the setting says now.
            **lanes.params(found.lane, found.lanes),
        }
        cursor.execute(*batch.sql(model, connection, found.names, batch.IN_BATCH, params, model_names))
        rows = cursor.fetchall()
        ids = [event_id for _, event_id, _ in rows]
        lag_ms = max((lag for _, _, lag in rows), default=None)
        # The messages owed to webhook endpoints commit with their changes.
        endpoints = messages.record(cursor, [change_id for change_id, _, _ in rows])
        sink_messages.record(cursor, [change_id for change_id, _, _ in rows])  # and those owed to sinks
        caught_up = len(ids) < batch_size
        next_position = max(ids, default=position)
        if caught_up and high is not None and window_end < high:  # the window ended before the interval
            next_position = window_end if ids else interval.next_position(cursor, connection, table, params)
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
