"""The stream benchmark's third measurement: what the stream costs concurrent writers (benchmarks/stream.py).

Write throughput of 8 concurrent writers: untracked, tracked without stream
processes, and tracked with the listener and worker running, with NOTIFY and
in poll-only mode.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path

from benchmarks.stream_database import (
    EVENTS,
    PLAIN,
    TRACKED,
    counts,
    flush_redis,
    log,
    reset_tables,
    verify_exactly_once,
    wait_until_folded,
)
from benchmarks.stream_fold_throughput import _wait_for_fold_tasks
from benchmarks.stream_latency import fold_batches
from benchmarks.stream_observers import MAX_OTHER_LOAD, CpuAccount, NotifyCounter
from benchmarks.stream_processes import Stack
from benchmarks.stream_writers import timed_writes

#: Concurrent-writer variants: (name, table written, AUDIT_STREAM settings).
#: ``None``: no stream process runs (the events are folded after the run).
WRITE_VARIANTS = [
    ("untracked", PLAIN, {}),
    ("tracked, no stream processes", TRACKED, None),
    ("tracked, NOTIFY on", TRACKED, {}),
    ("tracked, NOTIFY off", TRACKED, {"NOTIFY": False}),
]


# --------------------------------------------------------------------------- 3. concurrent writers


def write_run(args, pool, variant: tuple[str, str, dict | None], rep: int, log_dir: Path) -> dict:
    """8 writers for a fixed time on one variant, with the stream processes running (unless None)."""
    name, table, settings = variant
    reset_tables()
    flush_redis(args.redis_url)
    stack = Stack(f"writers {name} {rep}", settings or {}, log_dir, args.redis_url)
    with stack if settings is not None else contextlib.nullcontext(stack), NotifyCounter() as notes:
        if settings is None:
            from audit_stream.stream import wakeup

            wakeup.disarm()  # no worker: nobody would re-arm it, nobody listens
        with CpuAccount(stack, pool) as account:
            start_at = time.time() + 1.0
            jobs = [(table, args.write_seconds, start_at, w) for w in range(args.writers)]
            rows = sum(pool.starmap(timed_writes, jobs, chunksize=1))
            end = start_at + args.write_seconds
            events, changes = counts()
            drain = wait_until_folded(timeout=120) if settings is not None else None
        tasks = _wait_for_fold_tasks(stack, events) if settings is not None else None
    batches = fold_batches() if settings is not None else None
    if settings is None:
        fold_all_in_process()
    verify_exactly_once(rows if table == TRACKED else 0)
    result = {
        "variant": name,
        "rep": rep,
        "rows": rows,
        "tx_per_s": rows / args.write_seconds,
        "notifications": notes.between(start_at, end + 0.5),
        "fold_batches": batches,
        "fold_tasks_finished": tasks,
        **account.result(),
        "backlog_at_end": events - changes,
        "drain_seconds": drain,
    }
    log(f"writers {name} (rep {rep + 1}): {result['tx_per_s']:,.0f} tx/s, {result['notifications']} NOTIFYs")
    return result


def fold_all_in_process() -> None:
    """Fold everything in this process (for the run without stream processes)."""
    from audit_stream.stream.fold import fold

    while not fold(EVENTS, max_seconds=3600).caught_up:
        pass


def concurrent_writes(args, pool, log_dir: Path) -> list[dict]:
    """Every variant, ``args.write_repeat`` times, the order rotating each repetition.

    Each run waits for a quiet machine first (within ``args.quiet``'s budget).
    A run during which other programs used more than ``MAX_OTHER_LOAD`` of the
    machine is marked disturbed and run again, at most ``args.write_retries``
    times in all; the summary leaves disturbed runs out.
    """
    runs = []
    retries = args.write_retries
    for rep in range(args.write_repeat):
        shift = rep % len(WRITE_VARIANTS)
        for variant in WRITE_VARIANTS[shift:] + WRITE_VARIANTS[:shift]:
            while True:
                args.quiet.wait()
                run = write_run(args, pool, variant, rep, log_dir)
                run["disturbed"] = run["other_load"] > MAX_OTHER_LOAD
                runs.append(run)
                if not run["disturbed"] or retries == 0:
                    break
                retries -= 1
                log(f"  other programs used {run['other_load']:.0%} of the machine: run again")
    return runs


def _median(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.median(values) if values else None


def write_summary(runs: list[dict]) -> list[dict]:
    """Per variant: median tx/s and its ratio to untracked, and the medians of the other columns.

    Over the undisturbed runs of the variant, or all of them if every one was disturbed.
    """
    summary = []
    for name, _, _ in WRITE_VARIANTS:
        mine = [r for r in runs if r["variant"] == name]
        mine = [r for r in mine if not r.get("disturbed")] or mine
        row = {"variant": name, "runs": len(mine), "all_tx_per_s": [round(r["tx_per_s"]) for r in mine]}
        for key in ("tx_per_s", "notifications", "fold_batches", "fold_tasks_finished", "stream_cpu_seconds",
                    "backend_cpu_seconds", "other_load", "backlog_at_end", "drain_seconds"):  # fmt: skip
            row[key] = _median(mine, key)
        summary.append(row)
    base = summary[0]["tx_per_s"]
    for row in summary:
        row["x_untracked"] = base / row["tx_per_s"]
    return summary
