"""The retention benchmark: how fast ``retention.prune`` deletes old events, and what it costs writers.

Usage::

    python -m benchmarks.retention            # full run (1,000,000 events, about 4 minutes)
    python -m benchmarks.retention --quick    # smoke run (100,000 events): JSON only, BENCHMARKS.md untouched
    python -m benchmarks.retention --partitioned --rows 1000000   # batched delete vs dropping partitions
    python -m benchmarks.retention --partitioned --rows 10000000 --fill sql --reuse   # at 10M, set-up kept
    python -m benchmarks.retention --partitioned --layouts partitioned ...   # the partition drop alone
    python -m benchmarks.retention_pool run1.log run2.log ...   # the writer's p99 pooled over such runs

It drops and recreates the database ``audit_stream_bench_retention``
(``--database-url``), with ``AUDIT_STREAM = {"RETENTION": {"perfapp.ItemEvent":
{"max_age": "90d"}}}``, and starts one child process, a paced writer
(``python -m benchmarks.perfapp.writer``) in its own process group, always
stopped at the end.

Set-up: ``bulk_create`` 1,000,000 tracked rows (50,000 per statement: one
event each; ``--fill sql``: ``INSERT ... SELECT generate_series``, the same
triggers without the ORM's per-row cost), fold them all in-process
(``fold_all()``), and copy the events aside once, aged by 100 days (the
event table itself is not updated: the append-only trigger forbids it). Before
every prune the event table is truncated and refilled from that copy, then
vacuumed, analysed and checkpointed, so each prune starts from the same
table. ``--reuse`` keeps the database as it is after the set-up in a template
database (``<name>_backlog``) and later runs of the same size start from a copy
of it, migrated to the checkout: the set-up of 10,000,000 events (insert and
fold) takes far longer than the measurement.

Measured:

1. ``prune(targets=["perfapp.ItemEvent"], batch_size=B)`` for B = 5,000 and
   20,000, 3 times each (median): rows/s (target >= 50,000), with the time
   to choose the rows (the candidates query) and to delete them (the
   batches), per-batch times, and ``EXPLAIN ANALYZE`` of a delete batch early
   and late in a prune;
2. a writer inserting one row per transaction at a steady rate into the same
   tracked table: latency for 10 s without a prune, then during a prune (per
   batch size), p50/p99/max and the ratio of the p99s;
3. ``manage.py prune_history`` once, its summary as printed.

Every prune is checked: the report's count is every aged event, none older
than 90 days is left, the writer's events are all still there, and the
``Change`` rows are untouched.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.perfapp.harness import (
    EVENT_MODEL,
    ITEMS,
    ROOT,
    Children,
    configure_environment,
    count,
    log,
    machine_info,
    migrate,
    recreate_database,
    save_json,
    utc_now,
)
from benchmarks.retention_backlog import _from_template, backlog
from benchmarks.retention_partitions import partitioned_main
from benchmarks.retention_pruning import (
    command_run,
    explain_batches,
    median_runs,
    prune_alone,
    prune_with_writer,
)
from benchmarks.retention_report import COMMAND, SECTION, markdown, print_tables
from benchmarks.sections import replace_section

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/audit_stream_bench_retention"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
POLICY = {"RETENTION": {EVENT_MODEL: {"max_age": "90d"}}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 events; BENCHMARKS.md untouched")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL, help="dropped and recreated!")
    parser.add_argument("--no-report", action="store_true", help="print only: no BENCHMARKS.md, no JSON")
    parser.add_argument("--update-migrations", action="store_true", help="regenerate perfapp's migrations")
    parser.add_argument(
        "--partitioned",
        action="store_true",
        help="compare today's batched delete with dropping partitions (10 per table), JSON only",
    )
    parser.add_argument(
        "--layouts",
        default="plain,partitioned",
        help="with --partitioned: the layouts to prune, comma-separated (plain, partitioned)",
    )
    parser.add_argument("--rows", type=int, default=None, help="events to prune (default 1,000,000)")
    parser.add_argument(
        "--fill",
        choices=["orm", "sql"],
        default="orm",
        help="set-up inserts: bulk_create (orm) or INSERT ... SELECT generate_series (sql, for 10,000,000)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the filled, folded and aged set-up in a template database and start from it next time",
    )
    parser.add_argument(
        "--writer-rate",
        type=int,
        default=100,
        help="the concurrent writer's transactions per second (more: a p99 of more samples, steadier)",
    )
    parser.add_argument(
        "--prune-nice",
        type=int,
        default=0,
        help="with --partitioned: run the prune's PostgreSQL backend at this nice value (a diagnosis:"
        " does the writer wait for a core, or for the prune?); the database must be on this machine",
    )
    args = parser.parse_args(argv)
    args.rows = args.rows or (100_000 if args.quick else 1_000_000)
    args.insert_per_statement = 50_000
    args.batch_sizes = [5_000, 20_000]
    args.command_batch_size = 10_000
    args.baseline_seconds = 3.0 if args.quick else 10.0
    args.repeat = 1 if args.quick else 3
    args.explain_batch_size = 20_000
    return args


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_environment(args.database_url, DEFAULT_REDIS_URL, POLICY)  # Redis: not used here
    import django

    django.setup()
    started = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="audit_stream_bench_retention-"))
    log(f"database {args.database_url}; process logs in {log_dir}")
    reused = _from_template(args) if args.reuse else None
    if reused is None:
        recreate_database()
        migrate(args.update_migrations, COMMAND)
    results: dict = {
        "date": utc_now(),
        "machine": machine_info(),
        "args": {k: v for k, v in vars(args).items() if k != "database_url"},
    }
    children = Children(log_dir)
    if args.partitioned:
        try:
            partitioned_main(args, children, log_dir, results, reused)
        finally:
            children.stop()
        if not args.no_report:
            save_json("retention_partitioned", results, True)
        return
    try:
        results["setup"] = backlog(args, reused)
        runs = [prune_alone(args, b, i) for i in range(args.repeat) for b in args.batch_sizes]
        results["prune_runs"] = runs
        results["prunes"] = median_runs(runs)
        results["explain"] = explain_batches(args)
        results["writer"] = [prune_with_writer(args, b, children, log_dir) for b in args.batch_sizes]
        results["command"] = command_run(args)
    finally:
        children.stop()
    results["items_written"] = count(ITEMS)
    results["total_seconds"] = time.monotonic() - started
    results["load_at_end"] = os.getloadavg()
    print_tables(results)
    if not args.no_report:
        save_json("retention", results, args.quick)
        if not args.quick:
            replace_section(SECTION, markdown(results))
            log(f"updated {(ROOT / 'BENCHMARKS.md').relative_to(ROOT)}")
    log(f"done in {results['total_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
