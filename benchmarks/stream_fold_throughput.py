"""The stream benchmark's first measurement: fold throughput (benchmarks/stream.py).

``audit_stream.stream.fold.fold()`` in-process on a backlog, per batch size,
with an ``EXPLAIN ANALYZE`` breakdown of one batch; and a burst folded by a
real worker woken by the real listener.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from benchmarks.stream_database import (
    CHANGE,
    CHECKPOINT,
    EVENTS,
    TRACKED,
    counts,
    execute,
    flush_redis,
    log,
    reset_tables,
    scalar,
    verify_exactly_once,
    wait_until_folded,
)
from benchmarks.stream_observers import CpuAccount, NotifyCounter, QuietWaiter, VisibilityProbe
from benchmarks.stream_processes import Stack
from benchmarks.stream_writers import _new_row

# --------------------------------------------------------------------------- 1. fold throughput


def create_backlog(rows: int, per_transaction: int = 5_000) -> None:
    """Insert ``rows`` tracked rows with ``bulk_create``, ``per_transaction`` per transaction."""
    from benchmarks.streamapp.models import TrackedRow

    for start in range(0, rows, per_transaction):
        n = min(per_transaction, rows - start)
        TrackedRow.objects.bulk_create(_new_row(TrackedRow, 0, start + i) for i in range(n))


def update_backlog(rows: int, per_transaction: int = 5_000) -> None:
    """Update every tracked row once (one event each), ``per_transaction`` rows per transaction."""
    for start in range(0, rows, per_transaction):
        execute(
            f"UPDATE {TRACKED} SET stock = stock + 1, note = 'updated' WHERE id > %s AND id <= %s",
            [start, start + per_transaction],
        )


def forget_folds() -> None:
    """Make every event unfolded again: no Change rows, no checkpoint."""
    execute(f"TRUNCATE {CHANGE}, {CHECKPOINT} RESTART IDENTITY")
    execute(f"VACUUM ANALYZE {CHANGE}")
    execute("CHECKPOINT")


def time_fold(batch_size: int, quiet: QuietWaiter) -> dict:
    """Fold the table in-process until caught up; events/s and time per batch.

    ``FOLD_LINGER`` is 0 here: a caught-up fold would otherwise wait that long
    for more work before returning, which is not folding time.
    """
    from django.test.utils import override_settings

    from audit_stream.stream.fold import fold

    folded_before = counts()[1]
    quiet.wait()
    with override_settings(AUDIT_STREAM={"FOLD_LINGER": 0}), CpuAccount() as account:
        start = time.perf_counter()
        folded = 0
        while True:
            result = fold(EVENTS, batch_size=batch_size, max_seconds=3600)
            folded += result.folded
            if result.caught_up and not result.busy:
                break
        seconds = time.perf_counter() - start
    verify_exactly_once()
    batches = math.ceil(folded / batch_size) or 1
    return {
        "events": folded,
        "changes_before": folded_before,
        "seconds": seconds,
        "events_per_s": folded / seconds,
        "ms_per_batch": seconds * 1000 / batches,
        "other_load": account.result()["other_load"],
    }


def _plan_nodes(plan: dict):
    """The nodes of a JSON plan, depth first, skipping SubPlans (their time is in their parent)."""
    yield plan
    for child in plan.get("Plans", []):
        if child.get("Parent Relationship") != "SubPlan":
            yield from _plan_nodes(child)


def _inclusive_ms(node: dict) -> float:
    return node["Actual Total Time"] * node.get("Actual Loops", 1)


def explain_fold_batch(batch_size: int) -> dict | None:
    """EXPLAIN ANALYZE one fold batch from the middle of the unfolded events; rolled back.

    The statement is the fold's own, built by ``audit_stream.stream.batch.sql``
    for a window of ``batch_size`` ids of the table's one lane. Splits the
    execution time into the steps of the statement, from the plan's
    inclusive node times (a plan whose shape changed only skips the breakdown).
    """
    from django.apps import apps
    from django.db import connection, transaction

    from audit_stream.stream import batch, lanes

    model = next(model for model in apps.get_models() if model._meta.db_table == EVENTS)
    checkpoint = execute(f"SELECT snapshot FROM {CHECKPOINT} WHERE event_table = %s AND lane = 0", [EVENTS])
    done = checkpoint[0][0] if checkpoint else "1:1:"  # never folded: every event is unfolded
    target = scalar("SELECT pg_current_snapshot()::text")
    unfolded = scalar(
        f"SELECT count(*) FROM {EVENTS} AS e WHERE NOT pg_visible_in_snapshot(e.pgh_xid::text::xid8, %s)",
        [done],
    )
    position = scalar(f"SELECT max(pgh_id) - %s FROM {EVENTS}", [unfolded // 2])
    window = {
        "done": done,
        "target": target,
        "position": position,
        "window_end": position + batch_size,
        "floor": 0,
        "limit": batch_size,
        **lanes.params(0, 1),
    }
    sql, params = batch.sql(model, connection, [EVENTS], batch.IN_BATCH, window, None)
    with transaction.atomic():
        plan = scalar("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
        transaction.set_rollback(True)
    try:
        return _fold_breakdown(plan[0] if isinstance(plan, list) else json.loads(plan)[0])
    except (KeyError, StopIteration, IndexError) as exc:  # the plan's shape changed: no breakdown
        log(f"EXPLAIN breakdown of the fold skipped: {type(exc).__name__}: {exc}")
        return None


def _fold_breakdown(explained: dict) -> dict:
    """Milliseconds per step of one fold batch, from inclusive node times."""
    nodes = list(_plan_nodes(explained["Plan"]))
    insert = next(n for n in nodes if n["Node Type"] == "ModifyTable")
    window = next(n for n in nodes if n["Node Type"] == "WindowAgg")
    read = next(n for n in _plan_nodes(window) if n["Node Type"] == "Limit")
    with_diff = next(n for n in nodes if n.get("Alias") == "w")
    insert_input = insert["Plans"][0]
    steps = {
        "read events (scan, filter, limit)": _inclusive_ms(read),
        "sort by object, lag(), previous Change lookup": _inclusive_ms(window) - _inclusive_ms(read),
        "jsonb snapshot and diff": _inclusive_ms(with_diff) - _inclusive_ms(window),
        "sort by pgh_id": _inclusive_ms(insert_input) - _inclusive_ms(with_diff),
        "insert Change rows (heap, 6 indexes, unique key)": _inclusive_ms(insert)
        - _inclusive_ms(insert_input),
    }
    return {
        "rows": insert["Actual Rows"],
        "execution_ms": explained["Execution Time"],
        "planning_ms": explained["Planning Time"],
        "scan": _scan_of(read),
        "steps_ms": steps,
    }


def _scan_of(node: dict) -> str:
    """The scan under ``node`` that reads the events (below any sort; not an InitPlan or a SubPlan)."""
    nodes = [n for n in _plan_nodes(node) if n.get("Parent Relationship") != "InitPlan"]
    scans = [n for n in nodes if "Relation Name" in n]
    return f"{scans[0]['Node Type']} on {scans[0]['Relation Name']}" if scans else "?"


def fold_in_process(args: argparse.Namespace) -> dict:
    """Fold a backlog of inserts at each batch size, then one of updates (diffs against folded changes)."""
    reset_tables()
    log(f"fold: inserting a backlog of {args.backlog:,} events")
    create_backlog(args.backlog)
    execute(f"VACUUM ANALYZE {EVENTS}")
    explain_inserts = explain_fold_batch(5_000)
    runs = []
    for batch_size in args.batch_sizes:
        forget_folds()
        run = {"backlog": "inserts", "batch_size": batch_size, **time_fold(batch_size, args.quiet)}
        log(f"fold: batch {batch_size:,}: {run['events_per_s']:,.0f} events/s")
        runs.append(run)
    log(f"fold: updating every row (+{args.backlog:,} events)")
    update_backlog(args.backlog)
    execute(f"VACUUM ANALYZE {EVENTS}")
    execute(f"VACUUM ANALYZE {CHANGE}")
    explain_updates = explain_fold_batch(5_000)
    execute("CHECKPOINT")
    run = {"backlog": "updates", "batch_size": 5_000, **time_fold(5_000, args.quiet)}
    log(f"fold: updates, batch 5,000: {run['events_per_s']:,.0f} events/s")
    runs.append(run)
    return {"runs": runs, "explain": {"inserts": explain_inserts, "updates": explain_updates}}


def burst(rows: int, per_transaction: int = 1_000) -> tuple[float, float]:
    """Insert ``rows`` tracked rows as fast as possible; return (first, last) commit time on the DB clock."""
    from benchmarks.streamapp.models import TrackedRow

    first = None
    for start in range(0, rows, per_transaction):
        n = min(per_transaction, rows - start)
        TrackedRow.objects.bulk_create(_new_row(TrackedRow, 0, start + i) for i in range(n))
        if first is None:
            first = scalar("SELECT extract(epoch FROM clock_timestamp())::float8")
    return first, scalar("SELECT extract(epoch FROM clock_timestamp())::float8")


def fold_through_celery(args: argparse.Namespace, concurrency: int, log_dir: Path) -> dict:
    """A burst of ``args.burst`` events, folded by a worker (``-c concurrency``) the listener wakes."""
    reset_tables()
    flush_redis(args.redis_url)
    args.quiet.wait()
    with (
        Stack(f"burst c{concurrency}", {}, log_dir, args.redis_url, concurrency) as stack,
        NotifyCounter() as notes,
        VisibilityProbe(0.01) as probe,
        CpuAccount(stack) as account,
    ):
        first, last = burst(args.burst)
        wait_until_folded(timeout=300)
        time.sleep(0.05)  # one more probe sample
        tasks = _wait_for_fold_tasks(stack, args.burst)
    verify_exactly_once(args.burst)
    final_id = scalar(f"SELECT max(id) FROM {CHANGE}")
    seen = probe.seen_at(final_id)
    seconds = seen - first
    result = {
        "concurrency": concurrency,
        "events": args.burst,
        "write_seconds": last - first,
        "seconds": seconds,
        "events_per_s": args.burst / seconds,
        "last_folded_at_after_first_commit": scalar(
            f"SELECT extract(epoch FROM max(folded_at))::float8 FROM {CHANGE}"
        )
        - first,
        "notifications": len(notes.times),
        "fold_tasks": tasks,
        "other_load": account.result()["other_load"],
    }
    log(f"celery -c {concurrency}: {args.burst:,} events in {seconds:.2f}s = {result['events_per_s']:,.0f}/s")
    return result


def _wait_for_fold_tasks(stack: Stack, events: int, timeout: float = 10.0) -> int:
    """The fold tasks the worker logged, once their events add up (the log line follows the commit)."""
    deadline = time.monotonic() + timeout
    while True:
        tasks, folded = stack.fold_tasks()
        if folded >= events or time.monotonic() > deadline:
            return tasks
        time.sleep(0.05)
