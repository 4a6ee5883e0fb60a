"""Does audit_stream's statement trigger pay for planning on every statement?

PL/pgSQL caches the plan of each SQL statement in a function. A statement
that uses PL/pgSQL variables is planned with parameters, and the plan cache
then decides, call by call, between its cached generic plan and a custom plan
made for that call (``plan_cache_mode = auto``: custom for the first five
calls, then whichever looked cheaper on average). A statement without
variables always reuses its generic plan. In a trigger that reads a
transition table, the estimated cost depends on how many rows the statement
that built the plan touched, so which way ``auto`` goes depends on what the
session did before.

This measures both ends: single-row writes with ``plan_cache_mode`` set to
``force_generic_plan`` and to ``force_custom_plan``, timing the trigger
functions with ``pg_stat_user_functions`` (see :mod:`benchmarks.fnprofile`).
django-pghistory's statement trigger, whose ``INSERT`` uses no variables, is
the control.

Usage::

    python -m benchmarks.plan_cache [--repeat N] [--single N] [--no-report]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys

import django

HEADING = "## Plan cache (benchmarks/plan_cache.py)"
#: (column, plan_cache_mode, run every write workload first). Each cell starts on a new connection.
CELLS = (
    ("auto, new session", "auto", False),
    ("auto, after the write workloads", "auto", True),
    ("forced generic", "force_generic_plan", False),
    ("forced custom", "force_custom_plan", False),
)
VARIANTS = ("audit_stream", "pghistory statement")
WORKLOADS = ("insert_ctx", "save")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.plan_cache", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="runs per cell; medians are reported (default 5)"
    )
    parser.add_argument(
        "--single", type=int, default=2_000, help="single-row statements per run (default 2000)"
    )
    parser.add_argument("--no-report", action="store_true", help="print only: BENCHMARKS.md untouched")
    return parser.parse_args(argv)


def measure(
    profiled, variants, category_ids: list[int], repeat: int
) -> dict[tuple[str, str, str], list[float]]:
    """Trigger-function self time per statement (µs), by (workload, variant, cell)."""
    samples: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(repeat):
        for cell, mode, history in CELLS:
            for variant in variants:
                _new_session(mode)
                if history:
                    _run_write_workloads(variant, category_ids)
                for workload in profiled:
                    key = (workload.key, variant.key, cell)
                    samples.setdefault(key, []).append(_trigger_us(workload, variant, category_ids))
    return samples


def _new_session(mode: str) -> None:
    """Reconnect (empty PL/pgSQL plan caches), LISTEN again, set ``plan_cache_mode``."""
    from django.db import connection

    from benchmarks import db, notify

    connection.close()
    notify.listen()
    db.execute(f"SET plan_cache_mode = {mode}")


def _run_write_workloads(variant, category_ids: list[int]) -> None:
    """One run of each write-benchmark workload (default sizes) on the variant."""
    from benchmarks import runner, workloads

    for workload in workloads.build(workloads.Sizes()):
        runner.measure(workload, variant, category_ids)


def _trigger_us(workload, variant, category_ids: list[int]) -> float:
    """Self time of the variant's trigger functions per statement, in one profiled run."""
    from benchmarks import fnprofile

    _, stats = fnprofile.profile(workload, variant, category_ids)
    return 1000 * sum(s.self_ms for s in stats if s.role == "trigger") / workload.rows


def table(profiled, variants, samples) -> str:
    """Trigger self time per statement in each cell, per workload and variant."""
    lines = [
        "| workload | variant | " + " | ".join(cell for cell, _, _ in CELLS) + " |",
        "|---|---|" + "--:|" * len(CELLS),
    ]
    for workload in profiled:
        for variant in variants:
            cells = " | ".join(
                f"{statistics.median(samples[(workload.key, variant.key, cell)]):.1f}" for cell, _, _ in CELLS
            )
            lines.append(f"| {workload.description} | {variant.key} | {cells} |")
    return "\n".join(lines)


def markdown(meta: dict, body: str) -> str:
    """The BENCHMARKS.md section."""
    return "\n".join(
        [
            HEADING,
            "",
            f"Measured {meta['date']} with `{meta['command']}`: {meta['repeat']} runs per cell, medians;"
            f" same machine as above; audit_stream {meta['audit_stream']}.",
            "",
            "Self time of the tracked table's trigger functions (helpers excluded), µs per single-row"
            " statement, from `pg_stat_user_functions`. Every cell starts on a new connection; `auto` is"
            " PostgreSQL's default `plan_cache_mode`, measured on a new session and after one run of each"
            " write-benchmark workload (bulk statements included) on the same session; the forced modes"
            " bracket what `auto` can choose.",
            "",
            body,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Run the measurement, print the table, update BENCHMARKS.md."""
    args = parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    django.setup()
    from benchmarks import notify, sections, variants, workloads
    from benchmarks.write import audit_stream_source, setup_database

    category_ids = setup_database(update_migrations=False)
    notify.listen()
    chosen_workloads = [w for w in workloads.build(workloads.Sizes(single=args.single)) if w.key in WORKLOADS]
    chosen_variants = [v for v in variants.VARIANTS if v.key in VARIANTS]
    samples = measure(chosen_workloads, chosen_variants, category_ids, args.repeat)
    meta = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks.plan_cache" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
        "repeat": args.repeat,
        "audit_stream": audit_stream_source(),
    }
    section = markdown(meta, table(chosen_workloads, chosen_variants, samples))
    print(section)
    if not args.no_report:
        sections.replace_section(HEADING, section)


if __name__ == "__main__":
    main()
