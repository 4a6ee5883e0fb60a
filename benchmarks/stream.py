"""The stream benchmark: fold throughput, commit-to-Change latency, and what the stream costs writers.

Usage::

    python -m benchmarks.stream            # full run (8-10 min; +2 at most waiting for a quiet machine)
    python -m benchmarks.stream --quick    # smoke run (about 2 minutes): smaller sizes, JSON only
    python -m benchmarks.stream --render benchmarks/results/stream-<date>.json   # rewrite the section only
    python -m benchmarks.stream --lanes 1,2,4 # fold lanes side by side only (benchmarks/lanes.py)
    python -m benchmarks.stream --burst    # a burst folded without and with statistics (benchmarks/burst.py)

It drops and recreates the database ``audit_stream_bench_stream`` and flushes
Redis database 14 (``--database-url``, ``--redis-url``), and starts real
stream processes (``celery -A worker worker`` and ``python -m worker.listen``)
as children in their own process groups, which are always killed at the end.

Three measurements (see the "Stream" section of BENCHMARKS.md):

1. fold throughput: ``audit_stream.stream.fold.fold()`` in-process on a
   backlog, per batch size, with an ``EXPLAIN ANALYZE`` breakdown of one
   batch; and a burst folded by a real worker woken by the real listener;
2. commit-to-Change latency at a steady rate of single-row transactions,
   with NOTIFY and in poll-only mode, and the NOTIFY rate past the fold
   task's ``max_seconds`` under steady writes;
3. write throughput of 8 concurrent writers: untracked, tracked without
   stream processes, and tracked with the listener and worker running, with
   NOTIFY and in poll-only mode.

Every run checks that each event became exactly one ``Change`` row.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.sections import replace_section
from benchmarks.stream_database import (
    COMMAND,
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    configure_environment,
    flush_redis,
    log,
    machine_info,
    migrate,
    recreate_database,
)
from benchmarks.stream_fold_throughput import fold_in_process, fold_through_celery
from benchmarks.stream_latency import LATENCY_MODES, latency_run, steady_run
from benchmarks.stream_observers import QuietWaiter
from benchmarks.stream_report import SECTION, markdown, print_tables, save
from benchmarks.stream_write_throughput import concurrent_writes, write_summary
from benchmarks.stream_writers import writer_pool

# --------------------------------------------------------------------------- set-up


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; ``--quick`` scales every size and duration down."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes, 1 repetition, BENCHMARKS.md untouched"
    )
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL, help="dropped and recreated!")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="flushed!")
    parser.add_argument("--no-report", action="store_true", help="print only: no BENCHMARKS.md, no JSON")
    parser.add_argument(
        "--render", metavar="JSON", help="measure nothing: print and write BENCHMARKS.md from a saved result"
    )
    parser.add_argument(
        "--update-migrations", action="store_true", help="regenerate streamapp's migrations first"
    )
    parser.add_argument(
        "--lanes",
        type=lambda text: [int(n) for n in text.split(",")],
        metavar="N,N,...",
        help="measure only the fold throughput of one table folded in N lanes by N workers, for each N"
        " side by side (benchmarks/lanes.py)",
    )
    parser.add_argument("--lanes-repeat", type=int, default=3, help="runs of each N, interleaved (--lanes)")
    parser.add_argument("--lanes-batch", type=int, default=5_000, help="fold batch size (--lanes)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.backlog = 20_000 if quick else 200_000
    args.batch_sizes = [1_000, 5_000, 20_000]
    args.burst = 5_000 if quick else 50_000
    args.latency_rates = [200, 1_000]
    args.latency_seconds = 5.0 if quick else 20.0
    args.writers = 8
    args.write_seconds = 3.0 if quick else 10.0
    args.write_repeat = 1 if quick else 3
    args.write_retries = 0 if quick else 3
    args.quiet_budget = 0.0 if quick else 120.0
    args.steady_seconds = 0.0 if quick else 45.0
    return args


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace, log_dir: Path) -> dict:
    """All three measurements; the writer pool and every child process are gone when it returns."""
    args.quiet = QuietWaiter(args.quiet_budget)
    results: dict = {"in_process": fold_in_process(args)}
    results["celery"] = [fold_through_celery(args, c, log_dir) for c in (1, 2)]
    pool = writer_pool(args.writers)
    try:
        results["latency"] = [
            latency_run(args, pool, mode, settings, rate, log_dir)
            for mode, settings in LATENCY_MODES
            for rate in args.latency_rates
        ]
        results["steady"] = steady_run(args, pool, log_dir)
        runs = concurrent_writes(args, pool, log_dir)
    finally:
        pool.terminate()
        pool.join()
    results["writer_runs"] = runs
    results["writers"] = write_summary(runs)
    results["waited_for_quiet_seconds"] = args.quiet.waited
    return results


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the tables, write the JSON and the BENCHMARKS.md section."""
    if "--burst" in (
        sys.argv[1:] if argv is None else argv
    ):  # a measurement of its own (benchmarks/burst.py)
        from benchmarks import burst

        burst.main(argv)
        return
    args = parse_args(argv)
    if args.render:
        results = json.loads(Path(args.render).read_text())
        print_tables(results)
        replace_section(SECTION, markdown(results))
        log("updated BENCHMARKS.md")
        return
    configure_environment(args)
    # SIGTERM unwinds like Ctrl-C, through every `finally` that stops a child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import django

    django.setup()
    started = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="audit_stream_bench_stream-"))
    log(f"database {args.database_url}, redis {args.redis_url}; process logs in {log_dir}")
    recreate_database()
    migrate(args.update_migrations)
    flush_redis(args.redis_url)
    if args.lanes:
        _run_lanes(args, started)
        return
    results = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "args": {k: v for k, v in vars(args).items() if k not in ("database_url", "redis_url", "quiet")},
        **run(args, log_dir),
    }
    results["total_seconds"] = time.monotonic() - started
    print_tables(results)
    if not args.no_report:
        save(results, args.quick)
    log(f"done in {results['total_seconds'] / 60:.1f} min")


def _run_lanes(args: argparse.Namespace, started: float) -> None:
    """``--lanes``: the fold lanes measurement alone (benchmarks/lanes.py)."""
    from benchmarks import lanes

    args.quiet = QuietWaiter(args.quiet_budget)
    results = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "command": " ".join(["python -m benchmarks.stream", *sys.argv[1:]]),
        **lanes.measure(args),
    }
    results["total_seconds"] = time.monotonic() - started
    print("\nFold lanes\n\n" + lanes.table(results))
    if not args.no_report:
        lanes.save(results)
    log(f"done in {results['total_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
