"""The stream benchmark's second measurement: commit-to-Change latency (benchmarks/stream.py).

Steady single-row transactions, with NOTIFY and in poll-only mode, the latency
from each commit to its ``Change`` row; and the NOTIFY rate past the fold
task's ``max_seconds`` under steady writes.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

from benchmarks.perfapp.harness import summarize_ms as harness_summarize_ms
from benchmarks.stream_database import (
    CHANGE,
    EVENTS,
    execute,
    flush_redis,
    log,
    reset_tables,
    scalar,
    verify_exactly_once,
    wait_until_folded,
)
from benchmarks.stream_observers import CpuAccount, NotifyCounter, VisibilityProbe
from benchmarks.stream_processes import Stack
from benchmarks.stream_writers import paced_writes

NOTIFY_P99_TARGET_MS = 250.0
POLL_SLACK_MS = 100.0  # poll-only p99 target: poll interval + this

#: Latency modes: (name, AUDIT_STREAM settings for the worker and listener).
LATENCY_MODES = [
    ("NOTIFY on, poll 1.0 s", {}),
    ("NOTIFY off, poll 1.0 s", {"NOTIFY": False}),
    ("NOTIFY off, poll 0.25 s", {"NOTIFY": False, "POLL_INTERVAL": 0.25}),
]


# --------------------------------------------------------------------------- statistics


def summarize_ms(seconds: list[float]) -> dict:
    """The harness's summary (n, p50/p95/p99/max/mean in milliseconds), and how many were negative."""
    return {**harness_summarize_ms(seconds), "negative": sum(1 for s in seconds if s < 0)}


# --------------------------------------------------------------------------- 2. latency


def writers_for(rate: int) -> int:
    """Writer processes for a rate: one per 250 tx/s, at least 2."""
    return max(2, math.ceil(rate / 250))


def run_paced_writers(pool, rate: int, seconds: float) -> tuple[list[tuple[int, float, float]], float, float]:
    """Run the paced writers together; (commits, achieved tx/s, max lateness in s)."""
    n = writers_for(rate)
    start_at = time.time() + 1.0
    jobs = [(rate / n, seconds, start_at, w / n, w) for w in range(n)]
    results = pool.starmap(paced_writes, jobs, chunksize=1)
    commits = [c for r in results for c in r["commits"]]
    elapsed = max(r["elapsed"] for r in results)
    return commits, len(commits) / elapsed, max(r["max_late"] for r in results)


def change_times() -> dict[int, tuple[int, float]]:
    """Per tracked row: (Change id, folded_at) of its insert's Change."""
    rows = execute(
        f"SELECT object_id::bigint, id, extract(epoch FROM folded_at)::float8 FROM {CHANGE}"
        " WHERE event_table = %s AND label = 'snapshot'",
        [EVENTS],
    )
    return {obj: (change_id, folded) for obj, change_id, folded in rows}


def fold_batches() -> int:
    """Fold transactions that wrote Change rows (each has one ``folded_at``: its ``now()``)."""
    return scalar(f"SELECT count(DISTINCT folded_at) FROM {CHANGE}")


def latencies(commits: list[tuple[int, float, float]], probe: VisibilityProbe) -> dict:
    """Per commit: seconds until its Change row was seen, until its ``folded_at``, and the client's lag."""
    changes = change_times()
    return {
        "seen": [probe.seen_at(changes[pk][0]) - committed for pk, committed, _ in commits],
        "folded_at": [changes[pk][1] - committed for pk, committed, _ in commits],
        "client_after_commit": [after - committed for _, committed, after in commits],
    }


def latency_target_ms(settings: dict) -> float:
    """p99 target: 250 ms with NOTIFY, the poll interval + 100 ms without."""
    if settings.get("NOTIFY", True):
        return NOTIFY_P99_TARGET_MS
    return settings.get("POLL_INTERVAL", 1.0) * 1000 + POLL_SLACK_MS


def latency_run(args, pool, mode: str, settings: dict, rate: int, log_dir: Path) -> dict:
    """Steady single-row writes at ``rate`` tx/s; latency from each commit to its Change row."""
    reset_tables()
    flush_redis(args.redis_url)
    args.quiet.wait()
    with (
        Stack(f"latency {mode} {rate}", settings, log_dir, args.redis_url) as stack,
        NotifyCounter() as notes,
        VisibilityProbe(0.01) as probe,
    ):
        with CpuAccount(stack, pool) as account:
            commits, achieved, max_late = run_paced_writers(pool, rate, args.latency_seconds)
            drain = wait_until_folded(timeout=60)
        time.sleep(0.05)  # one more probe sample
        tasks = stack.fold_tasks()[0]
    verify_exactly_once(len(commits))
    result = {
        "mode": mode,
        "settings": settings,
        "rate": rate,
        "writers": writers_for(rate),
        "achieved": achieved,
        "max_late_ms": max_late * 1000,
        "transactions": len(commits),
        **{name: summarize_ms(values) for name, values in latencies(commits, probe).items()},
        "target_p99_ms": latency_target_ms(settings),
        "notifications": len(notes.times),
        "fold_batches": fold_batches(),
        "fold_tasks_finished": tasks,
        **account.result(),
        "drain_seconds": drain,
    }
    log(
        f"latency {mode} @ {rate}/s: achieved {achieved:,.0f}/s, seen p50 {result['seen']['p50']:.0f} ms,"
        f" p99 {result['seen']['p99']:.0f} ms (folded_at p99 {result['folded_at']['p99']:.0f} ms)"
    )
    return result


def task_durations(worker_log: str) -> list[float]:
    """Seconds each finished fold task took, from the worker's log."""
    return [float(d) for d in re.findall(r"audit_stream\.fold\[[^]]*\] succeeded in ([0-9.]+)s", worker_log)]


def steady_run(args, pool, log_dir: Path, rate: int = 1_000, max_seconds: float = 30.0) -> dict | None:
    """NOTIFYs per second before and after the fold task's ``max_seconds`` under steady writes.

    ``fold()`` is called with its default ``max_seconds`` (30 s) by the task; a
    run longer than that shows whether the task returns then and how the
    wake-up behaves past it.
    """
    if not args.steady_seconds:
        return None
    reset_tables()
    flush_redis(args.redis_url)
    args.quiet.wait()
    with Stack(f"steady {rate}", {}, log_dir, args.redis_url) as stack, NotifyCounter() as notes:
        commits, achieved, _ = run_paced_writers(pool, rate, args.steady_seconds)
        wait_until_folded(timeout=60)
        time.sleep(0.5)
        durations = task_durations(stack.procs[0].output())
    verify_exactly_once(len(commits))
    first = min(c[2] for c in commits)  # client clock: comparable with the notification times
    last = max(c[2] for c in commits)
    result = {
        "rate": rate,
        "achieved": achieved,
        "seconds": last - first,
        "max_seconds": max_seconds,
        "notify_per_s_before": notes.between(first, first + max_seconds) / max_seconds,
        "notify_per_s_after": notes.between(first + max_seconds, last)
        / max(last - first - max_seconds, 1e-9),
        "fold_tasks_finished": len(durations),
        "longest_task_seconds": max(durations, default=0.0),
    }
    log(
        f"steady {rate}/s for {result['seconds']:.0f}s: NOTIFY {result['notify_per_s_before']:.1f}/s before"
        f" {max_seconds:.0f}s, {result['notify_per_s_after']:.1f}/s after; longest fold task"
        f" {result['longest_task_seconds']:.1f}s"
    )
    return result
