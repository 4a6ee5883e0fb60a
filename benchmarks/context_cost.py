"""What a context costs a single-row transaction, measured on its own.

Usage::

    python -m benchmarks.context_cost           # 15 pairs of 1,000 transactions; updates BENCHMARKS.md
    python -m benchmarks.context_cost --quick   # 3 x 200; BENCHMARKS.md untouched

The write benchmark times every workload once per repetition, so its in-context
and out-of-context runs of a variant are minutes apart. Here the two runs of a
pair are back to back, many times, and the cost is the median of the ratios of
each pair: ``in context ÷ without``, minus one. Measured for audit_stream (the
default settings), django-pghistory's statement-level mode, and, to separate
audit_stream's two costs, the untracked table inside ``audit_stream.context``:
there only the execute wrapper and the ``set_config`` prefix it sends run; no
trigger reads the context.

Uses the write benchmark's database (recreated and migrated here).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import django

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Context cost (benchmarks/context_cost.py)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.context_cost", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rows", type=int, default=1_000, help="transactions per run (default 1000)")
    parser.add_argument("--repeat", type=int, default=15, help="pairs of runs per case (default 15)")
    parser.add_argument("--quick", action="store_true", help="3 x 200; BENCHMARKS.md untouched")
    parser.add_argument("--no-report", action="store_true", help="print only")
    return parser.parse_args(argv)


def _timed_run(variant, operation: str, in_context: bool, scope, rows: int, category_ids) -> float:
    """Seconds for ``rows`` single-row transactions of ``operation`` on ``variant``."""
    from benchmarks import db, runner, workloads

    prefill = rows if operation == "save" else 0
    runner.prepare(variant, category_ids, prefill=prefill)
    make = workloads._saves(False) if operation == "save" else workloads._inserts(False)
    timed = make(variant, rows, category_ids)
    gc.collect()
    with scope():
        start = time.perf_counter()
        timed()
        seconds = time.perf_counter() - start
    expected = rows
    if db.count(variant.model._meta.db_table) != expected:
        raise AssertionError(f"{variant.key}: the run did not write {expected} rows")
    if variant.event_model is not None:
        events = db.count(variant.event_model._meta.db_table)
        with_context = db.count(variant.event_model._meta.db_table, "pgh_context_id IS NOT NULL")
        if events != rows or with_context != (rows if in_context else 0):
            raise AssertionError(
                f"{variant.key}: {events} events, {with_context} in a context; expected {rows}"
            )
    return seconds


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows, repeat = (200, 3) if args.quick else (args.rows, args.repeat)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    django.setup()
    import contextlib

    import audit_stream
    from benchmarks import sections, variants
    from benchmarks.write import machine_info, setup_database

    category_ids = setup_database(False)
    by_key = {v.key: v for v in variants.VARIANTS}
    untracked, ours, theirs = by_key["untracked"], by_key["audit_stream"], by_key["pghistory statement"]
    cases = [
        ("audit_stream", ours, ours.context),
        ("pghistory statement", theirs, theirs.context),
        ("untracked, in audit_stream.context", untracked, lambda: audit_stream.context(user="bench")),
    ]
    load_start = os.getloadavg()
    ratios: dict[tuple[str, str], list[float]] = {}
    seconds: dict[tuple[str, str, bool], list[float]] = {}
    for rep in range(repeat):
        for name, variant, scope in cases[rep % 3 :] + cases[: rep % 3]:
            for operation in ("insert", "save"):
                pair = [(False, contextlib.nullcontext), (True, scope)]
                if rep % 2:
                    pair.reverse()
                timings = {}
                for in_context, this_scope in pair:
                    tracked_context = in_context and variant.event_model is not None
                    timings[in_context] = _timed_run(
                        variant, operation, tracked_context, this_scope, rows, category_ids
                    )
                    seconds.setdefault((name, operation, in_context), []).append(timings[in_context])
                ratios.setdefault((name, operation), []).append(timings[True] / timings[False])
        print(f"  rep {rep + 1}/{repeat} done", file=sys.stderr, flush=True)

    load = "/".join(f"{x:.1f}" for x in load_start), "/".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        HEADING,
        "",
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC with"
        f" `python -m benchmarks.context_cost`: {repeat} pairs of runs of {rows:,} single-row"
        " transactions per case, each pair back to back (order alternating), medians.",
        "",
        f"Machine: {machine_info()['nproc']} cores; load average at start {load[0]}, at end {load[1]}.",
        "",
        "| case | operation | µs/transaction without | µs/transaction in a context"
        " | context cost (median of pair ratios) |",
        "|---|---|--:|--:|--:|",
    ]
    for name, _, _ in cases:
        for operation in ("insert", "save"):
            without = statistics.median(seconds[(name, operation, False)]) / rows * 1e6
            within = statistics.median(seconds[(name, operation, True)]) / rows * 1e6
            cost = statistics.median(ratios[(name, operation)]) - 1
            lines.append(
                f"| {name} | {'create()' if operation == 'insert' else 'save() update'} | {without:,.0f}"
                f" | {within:,.0f} | {cost:+.1%} |"
            )
    lines += [
        "",
        "The untracked rows isolate what the context costs before any trigger runs: the execute"
        " wrapper and what it sends, the `set_config` prefix on the context's first write and then,"
        " in autocommit, only the id in a leading comment. The audit_stream rows add the triggers'"
        " share: reading the id (an initplan) and attaching the context (skipped while this session's"
        " marker says it is attached).",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if not (args.quick or args.no_report):
        sections.replace_section(HEADING, section)
        print("updated BENCHMARKS.md", file=sys.stderr)


if __name__ == "__main__":
    main()
