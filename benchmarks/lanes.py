"""Fold lanes side by side: one table's backlog folded by N workers at once, for each N asked.

Run through the stream benchmark (same database handling, same tables)::

    python -m benchmarks.stream --lanes 1,2,4 --database-url postgres://.../audit_stream_bench_lanes

For each N, the same backlog of inserts (made once) is folded in-process by N
threads, one per lane (``FOLD_LANES`` = N, ``fold(table, lane=k)``), each on its
own connection, until every lane is caught up; then every event is checked to
be exactly one ``Change``. Each N is measured ``--lanes-repeat`` times in turn
(1, 2, 4, 1, 2, 4, ...), so a change in the machine's load hits every N alike.

Reported per run: events/s (wall clock), the CPU seconds the fold used (the
PostgreSQL backends plus this Python process), hence the CPU cost per 1,000
events (the per-lane cost: what one lane needs a core for), and the other
programs' share of the machine during the run. The projection for N workers
on N free cores is N times the rate one core sustains at that cost.
"""

from __future__ import annotations

import os
import statistics
import threading
import time

from benchmarks.stream_database import EVENTS, ROOT, execute, log, reset_tables, verify_exactly_once
from benchmarks.stream_fold_throughput import create_backlog, forget_folds
from benchmarks.stream_observers import BackendCpu, machine_busy_seconds
from benchmarks.stream_processes import process_cpu

LABEL = "streamapp.TrackedRowEvent"
SECTION = "## Fold lanes (benchmarks/stream.py --lanes)"


def measure(args) -> dict:
    """Fold the same backlog with each number of lanes in ``args.lanes``; the runs and their medians."""
    reset_tables()
    log(f"lanes: inserting a backlog of {args.backlog:,} events")
    create_backlog(args.backlog)
    execute(f"VACUUM ANALYZE {EVENTS}")
    runs = []
    for repeat in range(args.lanes_repeat):
        for lanes in args.lanes:
            run = {"lanes": lanes, "repeat": repeat, **_fold_with_lanes(lanes, args)}
            log(
                f"lanes: N={lanes}: {run['events_per_s']:,.0f} events/s,"
                f" {run['cpu_ms_per_1000']:.0f} ms CPU per 1,000 events, other load {run['other_load']:.0%}"
            )
            runs.append(run)
    return {"runs": runs, "summary": _summary(runs, args.lanes), "backlog": args.backlog}


def _fold_with_lanes(lanes: int, args) -> dict:
    """Fold the whole backlog with ``lanes`` threads, one per lane; wall time and CPU."""
    from django.db import connections
    from django.test.utils import override_settings

    from audit_stream.stream.fold import fold

    forget_folds()
    args.quiet.wait()
    folded = [0] * lanes
    seconds = [0.0] * lanes
    errors: list[BaseException] = []

    def lane_worker(lane: int) -> None:
        started = time.perf_counter()
        try:
            while True:
                result = fold(EVENTS, lane=lane, batch_size=args.lanes_batch, max_seconds=3600)
                folded[lane] += result.folded
                if result.caught_up and not result.busy:
                    break
        except BaseException as exc:  # reported after the run
            errors.append(exc)
        finally:
            seconds[lane] = time.perf_counter() - started
            connections.close_all()

    settings = {"FOLD_LINGER": 0, "FOLD_LANES": {LABEL: lanes}}
    with override_settings(AUDIT_STREAM=settings), BackendCpu() as backends:
        # The lanes' checkpoint rows first (one transaction), so no lane waits for another's creation.
        fold(EVENTS, lane=lanes, max_seconds=0)
        machine = machine_busy_seconds()
        own = process_cpu(os.getpid()) or 0.0
        start = time.perf_counter()
        threads = [threading.Thread(target=lane_worker, args=(lane,)) for lane in range(lanes)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
        own = (process_cpu(os.getpid()) or 0.0) - own
        machine = machine_busy_seconds() - machine
    if errors:
        raise errors[0]
    verify_exactly_once(args.backlog)
    events = sum(folded)
    cpu = backends.seconds() + own
    return {
        "events": events,
        "seconds": wall,
        "events_per_s": events / wall,
        "lane_seconds": seconds,
        "lane_events": folded,
        "cpu_seconds": cpu,
        "cpu_ms_per_1000": cpu * 1_000_000 / events if events else 0.0,
        "other_load": max(0.0, machine - cpu) / (wall * (os.cpu_count() or 1)),
    }


def _summary(runs: list[dict], lanes: list[int]) -> list[dict]:
    """Per N: median events/s and CPU cost, and what N workers on N free cores would reach."""
    rows = []
    for n in lanes:
        mine = [r for r in runs if r["lanes"] == n]
        rate = statistics.median(r["events_per_s"] for r in mine)
        cost = statistics.median(r["cpu_ms_per_1000"] for r in mine)
        per_core = 1_000_000 / cost if cost else 0.0  # events/s one core sustains at this cost
        rows.append(
            {
                "lanes": n,
                "events_per_s": rate,
                "cpu_ms_per_1000": cost,
                "per_core_events_per_s": per_core,
                "projected_n_cores_events_per_s": n * per_core,
                "other_load": statistics.median(r["other_load"] for r in mine),
            }
        )
    return rows


def table(results: dict) -> str:
    """Markdown: one row per N (medians), then every run."""
    lines = [
        "| lanes (= workers) | events/s measured | CPU ms per 1,000 events | one core at that cost"
        " | N workers on N free cores | other load |",
        "|--:|--:|--:|--:|--:|--:|",
    ]
    for row in results["summary"]:
        lines.append(
            f"| {row['lanes']} | {row['events_per_s']:,.0f} | {row['cpu_ms_per_1000']:.0f}"
            f" | {row['per_core_events_per_s']:,.0f} | ~{row['projected_n_cores_events_per_s']:,.0f}"
            f" | {row['other_load']:.0%} |"
        )
    runs = ", ".join(
        f"N={r['lanes']}: {r['events_per_s']:,.0f}/s ({r['other_load']:.0%} other)" for r in results["runs"]
    )
    return "\n".join(lines) + f"\n\nEvery run, in order: {runs}."


def save(results: dict) -> None:
    """JSON into benchmarks/results/ (the BENCHMARKS.md text around the table is written by hand)."""
    import json

    path = ROOT / "benchmarks" / "results" / f"lanes-{results['date'][:10]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"wrote {path.relative_to(ROOT)}")
