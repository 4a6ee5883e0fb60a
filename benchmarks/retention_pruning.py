"""The retention benchmark's prunes (benchmarks/retention.py).

Timed alone, explained (``EXPLAIN ANALYZE`` of a delete batch early and late in
a prune), with a concurrent writer, and through ``manage.py prune_history``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

from benchmarks.perfapp.harness import (
    EVENT_MODEL,
    EVENTS,
    Children,
    count,
    log,
    read_writer,
    scalar,
    summarize_ms,
)
from benchmarks.retention_backlog import CHANGE, restore

# --------------------------------------------------------------------------- pruning


@contextlib.contextmanager
def instrumented():
    """Time ``retention.batches.fill`` (the candidates query) while pruning; yields [(start, end)]."""
    from audit_stream.retention import batches

    fills: list[tuple[float, float]] = []
    original = batches.fill

    def timed_fill(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            fills.append((started, time.perf_counter()))

    batches.fill = timed_fill
    try:
        yield fills
    finally:
        batches.fill = original


def timed_prune(batch_size: int, expected: int) -> dict:
    """``prune()`` the event model with ``batch_size``; rows/s, phases and per-batch times. Checked."""
    from audit_stream import retention

    marks: list[float] = []
    with instrumented() as fills:
        started = time.perf_counter()
        report = retention.prune(
            targets=[EVENT_MODEL],
            batch_size=batch_size,
            progress=lambda *_: marks.append(time.perf_counter()),
        )
        seconds = time.perf_counter() - started
    deleted = report.rows.get(EVENTS, 0)
    if report.errors or deleted != expected:
        raise RuntimeError(f"prune deleted {deleted:,} events, expected {expected:,}; errors {report.errors}")
    left = count(EVENTS, "pgh_created_at < now() - interval '90 days'")
    if left:
        raise RuntimeError(f"{left:,} events older than 90 days are left after the prune")
    fill_start, fill_end = fills[0] if fills else (started, started)
    batch_ms = [(b - a) * 1000 for a, b in zip([fill_end, *marks], marks, strict=False)]
    tenth = max(1, len(batch_ms) // 10)
    drain_s = marks[-1] - fill_end
    return {
        "batch_size": batch_size,
        "deleted": deleted,
        "seconds": seconds,
        "rows_per_s": deleted / seconds,
        "candidates_s": fill_end - fill_start if fills else None,
        "delete_s": drain_s,
        "delete_rows_per_s": deleted / drain_s,
        "contexts_s": report.seconds.get("audit_stream_context", 0.0),
        "other_s": seconds - (fill_end - fill_start) - drain_s,  # the contexts pass, the temporary table
        "batches": len(batch_ms),
        "batch_ms": summarize_ms([ms / 1000 for ms in batch_ms]),
        "first_tenth_batch_ms": sum(batch_ms[:tenth]) / tenth,
        "last_tenth_batch_ms": sum(batch_ms[-tenth:]) / tenth,
        "report": {"rows": report.rows, "seconds": report.seconds},
    }


def check_untouched(rows: int) -> None:
    """Pruning events must leave the Change rows alone."""
    if count(CHANGE) != rows:
        raise RuntimeError(f"{count(CHANGE):,} Change rows after pruning events, expected {rows:,}")


def prune_alone(args: argparse.Namespace, batch_size: int, repetition: int) -> dict:
    restore_s = restore(args.rows)
    log(f"prune, batch size {batch_size:,} (repetition {repetition + 1} of {args.repeat})")
    result = timed_prune(batch_size, args.rows)
    if count(EVENTS):
        raise RuntimeError(f"{count(EVENTS):,} events left after pruning every one")
    check_untouched(args.rows)
    log(f"  {result['rows_per_s']:,.0f} rows/s ({result['seconds']:.1f}s)")
    return {**result, "restore_s": restore_s, "repetition": repetition}


def median_runs(runs: list[dict]) -> list[dict]:
    """Per batch size, the run with the median rows/s, with the range of all its repetitions."""
    summary = []
    for batch_size in dict.fromkeys(r["batch_size"] for r in runs):
        same = sorted((r for r in runs if r["batch_size"] == batch_size), key=lambda r: r["rows_per_s"])
        rates = [r["rows_per_s"] for r in same]
        summary.append({**same[len(same) // 2], "repetitions": len(same), "range": [rates[0], rates[-1]]})
    return summary


# --------------------------------------------------------------------------- where a batch's time goes


def _plan_nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def _scans(explained: dict) -> list[dict]:
    """The scans of one EXPLAIN (ANALYZE, BUFFERS) plan: relation, type, ms (all loops), rows, buffers."""
    scans = []
    for node in _plan_nodes(explained["Plan"]):
        if "Scan" not in node["Node Type"] or "Relation Name" not in node:
            continue
        loops = node.get("Actual Loops", 1)
        scans.append(
            {
                "relation": node["Relation Name"],
                "node": node["Node Type"],
                "loops": loops,
                "ms": node["Actual Total Time"] * loops,
                "rows": node["Actual Rows"] * loops,
                "heap_fetches": node.get("Heap Fetches"),
                "buffers": sum(
                    node.get(f"{kind} {op} Blocks", 0)
                    for kind in ("Shared", "Local")
                    for op in ("Hit", "Read")
                ),
            }
        )
    return scans


def explain_batches(args: argparse.Namespace) -> dict | None:
    """EXPLAIN ANALYZE the next delete batch early and late in a real prune (each rolled back).

    Runs from the progress callback, between two batches, on the prune's own
    connection (its temporary table of chosen rows is there). Uses
    ``retention.counts.EVENT_DELETE_BATCH``, the batch of an event table.
    """
    from django.db import connection, transaction

    from audit_stream import retention
    from audit_stream.retention import batches as doomed
    from audit_stream.retention import counts

    batch_size = args.explain_batch_size
    batches = -(-args.rows // batch_size)
    picks = {1: "after the first batch", max(2, batches - 2): "two batches before the end"}
    sql = counts.EVENT_DELETE_BATCH.format(table=connection.ops.quote_name(EVENTS), doomed=doomed.DOOMED)
    plans: dict[str, dict] = {}
    calls = [0]

    def progress(table, done, total):
        calls[0] += 1
        if calls[0] not in picks:
            return
        try:
            with transaction.atomic(), retention.allow_prune():
                plan = scalar(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql,
                    {"batch": batch_size, "count_table": EVENTS},
                )
                transaction.set_rollback(True)
        except Exception as exc:  # retention's private SQL changed: the prune goes on
            log(f"EXPLAIN of a delete batch skipped: {type(exc).__name__}: {exc}")
            return
        explained = plan[0] if isinstance(plan, list) else json.loads(plan)[0]
        plans[picks[calls[0]]] = {
            "deleted_before": done,
            "execution_ms": explained["Execution Time"],
            "scans": _scans(explained),
        }

    restore(args.rows)
    log(f"EXPLAIN ANALYZE of delete batches early and late (batch size {batch_size:,})")
    report = retention.prune(targets=[EVENT_MODEL], batch_size=batch_size, progress=progress)
    if report.rows.get(EVENTS) != args.rows or count(EVENTS):
        raise RuntimeError(f"the explained prune deleted {report.rows}, {count(EVENTS):,} events left")
    return {"batch_size": batch_size, "plans": plans}


def prune_with_writer(args: argparse.Namespace, batch_size: int, children: Children, log_dir: Path) -> dict:
    """A paced writer: its latency for ``baseline_seconds`` without a prune, then during one."""
    restore(args.rows)
    out = log_dir / f"writer-{batch_size}.json"
    log(f"writer at {args.writer_rate} tx/s: {args.baseline_seconds:.0f}s alone, then during a prune")
    writer = children.writer(args.writer_rate, 3600, out)
    try:
        time.sleep(1.0)  # connection warm-up, first plans
        baseline = (time.time(), time.time() + args.baseline_seconds)
        time.sleep(args.baseline_seconds)
        prune_start = time.time()
        result = timed_prune(batch_size, args.rows)
        during = (prune_start, time.time())
    finally:
        children.stop(writer)
    data = read_writer(out)
    if count(EVENTS) != len(data["rows"]):
        raise RuntimeError(
            f"{count(EVENTS):,} events left, expected exactly the writer's {len(data['rows']):,}"
        )
    check_untouched(args.rows)

    def window(bounds: tuple[float, float]) -> dict:
        latencies = [lat for start, lat, _, _ in data["rows"] if bounds[0] <= start < bounds[1]]
        return {
            **summarize_ms(latencies),
            "seconds": bounds[1] - bounds[0],
            "tx_per_s": len(latencies) / (bounds[1] - bounds[0]),
        }

    without, with_prune = window(baseline), window(during)
    log(
        f"  writer p99 {without['p99']:.1f} ms without, {with_prune['p99']:.1f} ms during;"
        f" prune {result['rows_per_s']:,.0f} rows/s"
    )
    return {
        "batch_size": batch_size,
        "rate": args.writer_rate,
        "without": without,
        "during": with_prune,
        "p99_ratio": with_prune["p99"] / without["p99"],
        "prune": result,
        "writer_max_late_ms": data["max_late"] * 1000,
    }


def command_run(args: argparse.Namespace) -> dict:
    """``manage.py prune_history --model perfapp.ItemEvent --batch-size N``, stdout captured."""
    from django.core.management import call_command

    from audit_stream.models import RetentionRun

    restore(args.rows)
    argv = ["prune_history", "--model", EVENT_MODEL, "--batch-size", str(args.command_batch_size)]
    log("manage.py " + " ".join(argv))
    out = io.StringIO()
    started = time.perf_counter()
    call_command(*argv, stdout=out)
    seconds = time.perf_counter() - started
    run = RetentionRun.objects.filter(trigger="command").latest("started_at")
    if count(EVENTS) or run.rows.get(EVENTS) != args.rows or run.errors:
        raise RuntimeError(f"prune_history left {count(EVENTS):,} events; its run recorded {run.rows}")
    check_untouched(args.rows)
    return {
        "argv": argv,
        "seconds": seconds,
        "rows_per_s": args.rows / seconds,
        "output": out.getvalue().strip("\n"),  # the transient progress bar leaves blank lines
        "recorded": run.rows,
    }
