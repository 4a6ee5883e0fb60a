"""The retention benchmark: how fast ``retention.prune`` deletes old events, and what it costs writers.

Usage::

    python -m benchmarks.retention            # full run (1,000,000 events, about 4 minutes)
    python -m benchmarks.retention --quick    # smoke run (100,000 events): JSON only, BENCHMARKS.md untouched
    python -m benchmarks.retention --partitioned --rows 1000000   # batched delete vs dropping partitions
    python -m benchmarks.retention --partitioned --rows 10000000 --fill sql --reuse   # at 10M, set-up kept
    python -m benchmarks.retention --partitioned --layouts partitioned ...   # the partition drop alone

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
import contextlib
import io
import json
import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from benchmarks.perfapp.harness import (
    EVENT_MODEL,
    EVENTS,
    ITEMS,
    ROOT,
    Children,
    configure_environment,
    count,
    execute,
    fmt,
    insert_items,
    insert_items_sql,
    log,
    machine_info,
    met,
    migrate,
    prose,
    read_writer,
    recreate_database,
    save_json,
    scalar,
    summarize_ms,
    table,
    utc_now,
    vacuum,
)
from benchmarks.sections import replace_section

SECTION = "## Retention (benchmarks/retention.py)"
COMMAND = "python -m benchmarks.retention"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/audit_stream_bench_retention"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
POLICY = {"RETENTION": {EVENT_MODEL: {"max_age": "90d"}}}
CHANGE = "audit_stream_change"
BACKLOG = "bench_retention_backlog"
TARGET_ROWS_PER_S = 50_000


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
    args = parser.parse_args(argv)
    args.rows = args.rows or (100_000 if args.quick else 1_000_000)
    args.insert_per_statement = 50_000
    args.batch_sizes = [5_000, 20_000]
    args.command_batch_size = 10_000
    args.baseline_seconds = 3.0 if args.quick else 10.0
    args.repeat = 1 if args.quick else 3
    args.explain_batch_size = 20_000
    return args


# --------------------------------------------------------------------------- set-up


def build_backlog(args: argparse.Namespace) -> dict:
    """Insert, fold and age ``args.rows`` events; copy them aside. Returns the set-up timings."""
    from audit_stream.stream.fold import fold_all

    rows = args.rows
    log(f"inserting {rows:,} tracked rows ({args.insert_per_statement:,} per statement)")
    fill = insert_items_sql if args.fill == "sql" else insert_items
    insert_s = fill(rows, args.insert_per_statement)
    if count(EVENTS) != rows:
        raise RuntimeError(f"expected {rows:,} events after the insert, found {count(EVENTS):,}")
    vacuum(EVENTS)

    log("folding them in-process (fold_all)")
    started = time.perf_counter()
    results = fold_all(max_seconds=3600)  # the default 30 s budget would stop half-way
    fold_s = time.perf_counter() - started
    folded = sum(r.folded for r in results)
    changes, distinct = execute(f"SELECT count(*), count(DISTINCT event_id) FROM {CHANGE}")[0]
    if not folded == changes == distinct == rows:
        raise RuntimeError(
            f"fold: {folded:,} folded, {changes:,} changes, {distinct:,} distinct events; expected {rows:,}"
        )

    log("copying them aside, aged by 100 days")
    started = time.perf_counter()
    columns = [row[0] for row in execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
        " ORDER BY attnum",
        [EVENTS],
    )]  # fmt: skip
    aged_columns = ", ".join(
        f"{c} - interval '100 days' AS {c}" if c == "pgh_created_at" else c for c in columns
    )
    # The events are aged in the copy, which every prune starts from (restore()): no
    # UPDATE of the event table (it would take as long as the insert and double its size).
    # Logged when it is kept (--reuse): a database copied from a template holds an unlogged
    # table's rows only as far as they were written to disk.
    kind = "TABLE" if args.reuse else "UNLOGGED TABLE"
    execute(f"CREATE {kind} {BACKLOG} AS SELECT {aged_columns} FROM {EVENTS} ORDER BY pgh_id")
    backdate_s = time.perf_counter() - started
    aged = count(BACKLOG, "pgh_created_at < now() - interval '90 days'")
    if aged != rows:
        raise RuntimeError(f"{aged:,} of {rows:,} events are older than 90 days after ageing them")

    return {
        "rows": rows,
        "insert_s": insert_s,
        "insert_rows_per_s": rows / insert_s,
        "fold_s": fold_s,
        "fold_events_per_s": rows / fold_s,
        "backdate_s": backdate_s,
        "event_table_mb": scalar(f"SELECT (pg_total_relation_size('{EVENTS}') / 1e6)::float8"),
        "change_table_mb": scalar(f"SELECT (pg_total_relation_size('{CHANGE}') / 1e6)::float8"),
    }


# --------------------------------------------------------------------------- --reuse

SETUP_TABLE = "bench_retention_setup"


def _template() -> str:
    """The template database that keeps a filled, folded and aged set-up (``--reuse``)."""
    from django.conf import settings

    return f"{settings.DATABASES['default']['NAME']}_backlog"


def _maintenance(statement: str) -> list[tuple]:
    """One statement on the ``postgres`` database, in autocommit (database-level DDL)."""
    import psycopg
    from django.conf import settings
    from django.db import connection

    connection.close()
    db = settings.DATABASES["default"]
    params = {"host": db["HOST"], "port": db["PORT"], "user": db["USER"], "password": db.get("PASSWORD")}
    params = {k: v for k, v in params.items() if v}
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


def _from_template(args: argparse.Namespace) -> dict | None:
    """The benchmark database recreated from the kept set-up of ``args.rows`` events, and that set-up's
    timings; None when there is none (the run then builds it, and keeps it)."""
    from django.conf import settings
    from django.core.management import call_command

    template = _template()
    if not _maintenance(f"SELECT 1 FROM pg_database WHERE datname = '{template}'"):
        return None
    name = settings.DATABASES["default"]["NAME"]
    _maintenance(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _maintenance(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
    setup = json.loads(scalar(f"SELECT setup FROM {SETUP_TABLE}"))
    if setup["rows"] != args.rows:
        log(f"the kept set-up holds {setup['rows']:,} events, not {args.rows:,}: building it again")
        _maintenance(f'DROP DATABASE "{template}"')
        return None
    if count(BACKLOG) != args.rows:
        raise RuntimeError(f"the kept copy of the events is incomplete: drop {template}, run again")
    log(f"reusing the set-up kept in {template} ({setup['rows']:,} events); migrating it to this checkout")
    call_command("migrate", verbosity=0, interactive=False)
    return setup


def _keep_template(setup: dict) -> None:
    """Keep the database as it is now (filled, folded, aged copy made) as the ``--reuse`` template."""
    from django.conf import settings

    execute(f"CREATE TABLE {SETUP_TABLE} (setup text)")
    execute(f"INSERT INTO {SETUP_TABLE} VALUES (%s)", [json.dumps(setup)])
    execute("CHECKPOINT")
    template = _template()
    _maintenance(f'DROP DATABASE IF EXISTS "{template}"')
    name = settings.DATABASES["default"]["NAME"]
    # FILE_COPY: the files copied after a checkpoint, not every page written to the WAL (gigabytes).
    _maintenance(f'CREATE DATABASE "{template}" TEMPLATE "{name}" STRATEGY FILE_COPY')
    log(f"set-up kept in {template} (--reuse starts from it)")


def backlog(args: argparse.Namespace, reused: dict | None) -> dict:
    """The set-up's timings: the kept set-up's (``--reuse``), or a new set-up's, kept if asked."""
    if reused is not None:
        return {**reused, "reused": True}
    setup = build_backlog(args)
    if args.reuse:
        _keep_template(setup)
    return setup


def restore(rows: int) -> float:
    """Refill the event table with the aged events, vacuum, analyse, checkpoint; seconds taken."""
    started = time.perf_counter()
    execute(f"TRUNCATE {EVENTS}")
    execute(f"INSERT INTO {EVENTS} SELECT * FROM {BACKLOG} ORDER BY pgh_id")
    vacuum(EVENTS)
    if count(EVENTS) != rows:
        raise RuntimeError(f"restore: {count(EVENTS):,} events, expected {rows:,}")
    return time.perf_counter() - started


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


# --------------------------------------------------------------------------- report


def setup_table(results: dict) -> str:
    s = results["setup"]
    return table(
        ["step", "rows", "seconds", "rows/s"],
        [
            [
                "`bulk_create`, 50,000 per statement (triggers on)",
                f"{s['rows']:,}",
                f"{s['insert_s']:.1f}",
                f"{s['insert_rows_per_s']:,.0f}",
            ],
            [
                "fold them all in-process (`fold_all()`)",
                f"{s['rows']:,}",
                f"{s['fold_s']:.1f}",
                f"{s['fold_events_per_s']:,.0f}",
            ],
            [
                "age them (`UPDATE`, replica mode)",
                f"{s['rows']:,}",
                f"{s['backdate_s']:.1f}",
                f"{s['rows'] / s['backdate_s']:,.0f}",
            ],
        ],
    )


def prune_table(results: dict) -> str:
    rows = []
    runs = [
        (f"alone: median of {r['repetitions']} ({r['range'][0]:,.0f} to {r['range'][1]:,.0f})", r)
        for r in results["prunes"]
    ]
    runs += [(f"writer at {w['rate']} tx/s", w["prune"]) for w in results["writer"]]
    for label, r in runs:
        b = r["batch_ms"]
        rows.append(
            [
                f"{r['batch_size']:,}",
                label,
                f"{r['deleted']:,}",
                f"{r['seconds']:.1f}",
                f"**{r['rows_per_s']:,.0f}**",
                fmt(r["candidates_s"], ".1f"),
                f"{r['delete_s']:.1f}",
                f"{r['delete_rows_per_s']:,.0f}",
                str(r["batches"]),
                f"{b['p50']:.0f} / {b['p99']:.0f} / {b['max']:.0f}",
                f"{r['first_tenth_batch_ms']:.0f} → {r['last_tenth_batch_ms']:.0f}",
            ]
        )
    headers = [
        "batch size",
        "run",
        "rows deleted",
        "total s",
        "rows/s",
        "choose s",
        "delete s",
        "delete rows/s",
        "batches",
        "ms/batch p50 / p99 / max",
        "ms/batch first → last 10%",
    ]
    return table(headers, rows, right=set(range(2, len(headers))) | {0})


def explain_table(results: dict) -> str:
    explain = results.get("explain")
    if not explain:
        return "(EXPLAIN skipped: audit_stream.retention's private SQL changed.)"
    rows = []
    for when, plan in explain["plans"].items():
        rows.append(
            [
                when,
                f"{plan['deleted_before']:,}",
                "whole statement",
                "",
                f"{plan['execution_ms']:.0f}",
                "",
                "",
            ]
        )
        for scan in plan["scans"]:
            rows.append(
                [
                    "",
                    "",
                    f"{scan['node']} on `{scan['relation']}`"
                    + (f" (x{scan['loops']:,})" if scan["loops"] > 1 else ""),
                    f"{scan['rows']:,}",
                    f"{scan['ms']:.0f}",
                    fmt(scan["heap_fetches"]),
                    f"{scan['buffers']:,}",
                ]
            )
    headers = ["next batch", "rows deleted before", "step", "rows", "ms", "heap fetches", "buffers"]
    return table(headers, rows, right={1, 3, 4, 5, 6})


def writer_table(results: dict) -> str:
    rows = []
    for w in results["writer"]:
        for phase in ("without", "during"):
            s = w[phase]
            rows.append(
                [
                    f"{w['batch_size']:,}",
                    "without a prune" if phase == "without" else "during the prune",
                    f"{s['seconds']:.1f}",
                    f"{s['n']:,}",
                    f"{s['tx_per_s']:.0f}",
                    f"{s['p50']:.2f}",
                    f"{s['p99']:.2f}",
                    f"{s['max']:.1f}",
                    "" if phase == "without" else f"**{w['p99_ratio']:.2f}x**",
                ]
            )
    headers = [
        "prune batch size",
        "writer",
        "window s",
        "transactions",
        "tx/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "p99 during ÷ without",
    ]
    return table(headers, rows, right=set(range(2, len(headers))) | {0})


def explain_reading(explain: dict | None) -> str:
    """What the EXPLAIN of an early and a late batch shows, in a few sentences."""
    if not explain or len(explain["plans"]) != 2:
        return ""
    early, late = explain["plans"].values()
    size = f"{explain['batch_size']:,}-row"
    if late["execution_ms"] < 1.25 * early["execution_ms"]:
        return (
            f"A {size} batch costs about the same early and late in a prune ({early['execution_ms']:.0f} ms"
            f" after the first batch, {late['execution_ms']:.0f} ms after {late['deleted_before']:,} rows)"
            " in `EXPLAIN ANALYZE`. "
        )
    grown = [
        (first, scan)
        for first, scan in zip(early["scans"], late["scans"], strict=False)
        if first["relation"] == scan["relation"] and scan["buffers"] > 2 * first["buffers"]
    ]
    text = (
        f"A {size} batch takes {early['execution_ms']:.0f} ms in `EXPLAIN ANALYZE` after the first batch and"
        f" {late['execution_ms']:.0f} ms after {late['deleted_before']:,} rows are gone"
        f" ({late['execution_ms'] / early['execution_ms']:.1f}x)"
    )
    if grown:
        text += "; the scans that read more: " + ", ".join(
            f"the {scan['node']} on `{scan['relation']}` ({first['buffers']:,} → {scan['buffers']:,} buffers,"
            f" {first['ms']:.0f} → {scan['ms']:.0f} ms)"
            for first, scan in grown
        )
    text += "."
    if any("Index" in scan["node"] and scan["loops"] == 1 for _, scan in grown):
        text += (
            " Each batch's ordered scans start at the beginning of their index (`ORDER BY id LIMIT n` on the"
            " temporary table of chosen rows, and the event table's primary key under a merge join) and walk"
            " over the entries of every row already deleted, so the work of a batch grows with the rows"
            " pruned before it in the same run, and the total with their square; remembering the last id"
            " deleted (`WHERE id > last`) would keep it flat."
        )
    return text + " "


def reading(results: dict) -> str:
    prunes = results["prunes"]
    ok = all(r["rows_per_s"] >= TARGET_ROWS_PER_S for r in prunes)
    rates = ", ".join(f"{r['rows_per_s']:,.0f} rows/s with batches of {r['batch_size']:,}" for r in prunes)
    text = (
        f"**Prune.** {results['setup']['rows']:,} events pruned at {rates}"
        f" ({met(ok)}: target 50,000 rows/s). "
    )
    for r in prunes:
        choose = r["candidates_s"] or 0.0
        text += (
            f"With {r['batch_size']:,}-row batches, choosing the rows took {choose:.1f} s"
            f" ({choose / r['seconds']:.0%}) and deleting them {r['delete_s']:.1f} s"
            f" ({r['delete_rows_per_s']:,.0f} rows/s, {r['batch_ms']['p50']:.0f} ms per batch at the median,"
            f" {r['first_tenth_batch_ms']:.0f} ms in the first tenth of the batches and"
            f" {r['last_tenth_batch_ms']:.0f} ms in the last). "
        )
    text += explain_reading(results.get("explain"))
    writer = results["writer"]
    text += (
        "**Writer.** A writer inserting one row per transaction at "
        f"{writer[0]['rate']} tx/s: p99 "
        + "; ".join(
            f"{w['without']['p99']:.1f} ms without a prune and {w['during']['p99']:.1f} ms during one with"
            f" {w['batch_size']:,}-row batches ({w['p99_ratio']:.1f}x; max {w['during']['max']:.0f} ms)"
            for w in writer
        )
        + ". Its INSERT and the prune's DELETE take the same, non-conflicting table lock and touch"
        " different rows"
    )
    slowest = max(w["during"]["max"] for w in writer)
    batch = min(w["prune"]["batch_ms"]["p50"] for w in writer)
    if slowest < batch:
        text += (
            f", and its slowest transaction during a prune ({slowest:.0f} ms) is shorter than a median"
            f" batch ({batch:.0f} ms or more): it does not queue behind the batches. What it feels is the"
            " prune's CPU, I/O and WAL on a 2-core machine it shares with PostgreSQL."
        )
    else:
        text += (
            f"; its slowest transaction during a prune ({slowest:.0f} ms) is as long as a median batch"
            f" ({batch:.0f} ms), so some may have waited for one."
        )
    return text


def markdown(results: dict) -> str:
    a, m = results["args"], results["machine"]
    c = results["command"]
    blocks = [
        SECTION,
        f"Measured {results['date']} with `{COMMAND}` ({results['total_seconds'] / 60:.1f} min).",
        prose(
            f"""Machine: {m["nproc"]} cores (shared with PostgreSQL and the writer); PostgreSQL
            {m["postgresql"]} (shared_buffers {m["shared_buffers"]}, work_mem {m["work_mem"]},
            synchronous_commit {m["synchronous_commit"]}); Python {m["python"]}, Django {m["django"]};
            audit_stream at `{m["git"]}`
            (sources sha1 `{m["audit_stream_sha1"]}`); load average at start {m["load_at_start"][0]:.1f}, at
            the end {results["load_at_end"][0]:.1f}."""
        ),
        prose(
            f"""Method: a dedicated database (`audit_stream_bench_retention`, recreated and migrated at
            start), one tracked model (`perfapp.Item`, `@audit_stream.track()`: Snapshot + BeforeDelete;
            columns name, price, stock, note) and the policy `AUDIT_STREAM = {{"RETENTION":
            {{"perfapp.ItemEvent": {{"max_age": "90d"}}}}}}`. Set-up: {a["rows"]:,} rows inserted with
            `bulk_create` (one event each), folded in-process, then every event aged by 100 days (one
            `UPDATE` with `session_replication_role = replica`, which skips the append-only trigger). The
            aged events are copied aside once; before each prune the event table is truncated and refilled
            from the copy, vacuumed, analysed and checkpointed, so every prune starts from the same table. A
            prune is `audit_stream.retention.prune(targets=["perfapp.ItemEvent"], batch_size=B)`; "choose"
            is its candidates query (timed by wrapping `retention.batches.fill`), "delete" the batches
            after it (each batch ends with a progress call). Each prune is checked: it reports every aged
            event deleted, none older than 90 days is left, the writer's events and all `Change` rows are
            still there."""
        ),
        "### Set-up",
        setup_table(results),
        "### Prune throughput",
        prune_table(results),
        prose(
            """"ms/batch first → last 10%": mean time of a batch in the first and in the last tenth of the
            batches of that prune. Where the time of one batch goes, early and late in a prune (`EXPLAIN
            (ANALYZE, BUFFERS)` of the next batch's statement, `retention.counts.EVENT_DELETE_BATCH`, run
            between two batches on the prune's connection and rolled back):"""
        ),
        explain_table(results),
        "### A concurrent writer",
        prose(
            f"""A separate process (`python -m benchmarks.perfapp.writer`) inserts one `perfapp.Item` per
            autocommit transaction at a steady {a["writer_rate"]} tx/s into the tracked table (so each
            transaction also writes an event), and records each statement's latency (send to commit
            returned). The same writer runs {a["baseline_seconds"]:.0f} s without a prune, then through a
            whole prune; the prune rows above marked "writer" are those prunes."""
        ),
        writer_table(results),
        "### `manage.py prune_history`",
        f"`{' '.join(c['argv'])}` on the same {a['rows']:,} aged events ({c['rows_per_s']:,.0f} rows/s"
        " end to end, including the command's bookkeeping); its output, as printed:",
        "```\n" + c["output"].rstrip() + "\n```",
        "### Reading",
        reading(results),
    ]
    return "\n\n".join(blocks) + "\n"


def print_tables(results: dict) -> None:
    print("\nSet-up\n\n" + setup_table(results))
    print("\nPrune throughput\n\n" + prune_table(results))
    print("\nOne delete batch, early and late\n\n" + explain_table(results))
    print("\nA concurrent writer\n\n" + writer_table(results))
    print("\nprune_history\n\n" + results["command"]["output"])
    print(reading(results))


# --------------------------------------------------------------------------- main


# --------------------------------------------------------------------------- by partition (issue 19)

PARTITIONS_PER_TABLE = 10


def _size_mb() -> float:
    """The event table's size with its indexes, every partition included."""
    return scalar(
        f"SELECT (coalesce((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('{EVENTS}')),"
        f" pg_total_relation_size('{EVENTS}')) / 1e6)::float8"
    )


def _wal() -> str:
    return scalar("SELECT pg_current_wal_lsn()::text")


def _age_partition_bounds() -> None:
    """Set-up only: the full partitions' time bounds move back 100 days with their (aged) events."""
    from django.db import connection

    from audit_stream import partitions

    with connection.cursor() as cursor:
        for part in partitions.partitions(cursor, EVENTS):
            if part.full_before is not None:
                bound = (part.full_before - timedelta(days=100)).isoformat()
                cursor.execute(f"COMMENT ON TABLE {part.name} IS %s", [f"audit_stream: full before {bound}"])


@contextlib.contextmanager
def _timed_drops():
    """Time retention's partition drops while pruning; yields the steps as (name, start, end) wall times.

    The steps: ``detach`` (one transaction for every partition: the only step
    that locks the table), then ``read_and_drop``, one transaction of ``read``
    (each detached partition read once: its rows counted for the report, its
    events taken off their contexts' counts), ``drop`` (the statement, outside
    the table's lock) and the commit (when the files are unlinked); then
    ``batches`` (the straddling partition's batched delete) and ``contexts``
    (unreferenced contexts).
    """
    from audit_stream import partitions
    from audit_stream.retention import batches, contexts, drops

    spans: list[tuple[str, float, float]] = []
    targets = [
        (drops, "_detach", "detach"),
        (drops, "drop_detached", "read_and_drop"),  # the transaction, its commit (the files' unlink) included
        (drops, "_take_rows", "read"),
        (partitions, "drop_detached", "drop"),
        (batches, "drain", "batches"),
        (contexts, "prune_contexts", "contexts"),
    ]
    originals = [getattr(module, attribute) for module, attribute, _ in targets]

    def timer(original, name):
        def timed(*args, **kwargs):
            started = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                spans.append((name, started, time.time()))

        return timed

    for (module, attribute, name), original in zip(targets, originals, strict=True):
        setattr(module, attribute, timer(original, name))
    try:
        yield spans
    finally:
        for (module, attribute, _), original in zip(targets, originals, strict=True):
            setattr(module, attribute, original)


def _step_seconds(spans: list[tuple[str, float, float]], name: str) -> float:
    return sum(end - start for step, start, end in spans if step == name)


def _slowest_writes(rows: list, bounds: tuple[float, float], spans: list, how_many: int = 5) -> list[dict]:
    """The writer's slowest transactions during the prune, each with the drop steps it overlapped."""
    during = sorted(
        ((start, latency) for start, latency, _, _ in rows if bounds[0] <= start < bounds[1]),
        key=lambda row: -row[1],
    )
    slowest = []
    for start, latency in during[:how_many]:  # latency in seconds
        end = start + latency
        steps = sorted({step for step, s, e in spans if s < end and e > start})
        slowest.append(
            {"ms": latency * 1000, "at_s": start - bounds[0], "overlapped": steps or ["(batches)"]}
        )
    return slowest


def layout_run(args: argparse.Namespace, layout: str, children: Children, log_dir: Path) -> dict:
    """One prune of every aged event with a paced writer: its p99 before and during, WAL and size after."""
    from audit_stream import partitions

    restore(args.rows)
    if layout == "partitioned":
        partitions.ensure(partitions.Layout(EVENTS, args.partition_size, 2))
        _age_partition_bounds()
    size_before = _size_mb()
    out = log_dir / f"writer-{layout}.json"
    log(
        f"{layout}: writer at {args.writer_rate} tx/s,"
        f" twice {args.baseline_seconds:.0f}s alone, then during a prune"
    )
    writer = children.writer(args.writer_rate, 3600, out)
    try:
        time.sleep(1.0)
        # Two windows alone: the second is the baseline, their ratio this machine's noise.
        control = (time.time(), time.time() + args.baseline_seconds)
        time.sleep(args.baseline_seconds)
        baseline = (time.time(), time.time() + args.baseline_seconds)
        time.sleep(args.baseline_seconds)
        wal_before = _wal()
        prune_start = time.time()
        with _timed_drops() as spans:
            result = timed_prune(args.command_batch_size, args.rows)
        during = (prune_start, time.time())
        wal_bytes = scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)::bigint", [wal_before])
        # Also compared over a window as long as the baseline from the prune's start: a prune of
        # a fraction of a second holds a few dozen transactions, whose p99 is their maximum.
        same_length = (prune_start, prune_start + args.baseline_seconds)
        time.sleep(max(0.0, same_length[1] + 0.5 - time.time()))
    finally:
        children.stop(writer)
    data = read_writer(out)

    def window(bounds: tuple[float, float]) -> dict:
        latencies = [lat for start, lat, _, _ in data["rows"] if bounds[0] <= start < bounds[1]]
        return {**summarize_ms(latencies), "seconds": bounds[1] - bounds[0]}

    without, with_prune = window(baseline), window(during)
    found = {
        "layout": layout,
        "seconds": result["seconds"],
        "read_s": _step_seconds(spans, "read"),
        "detach_s": _step_seconds(spans, "detach"),
        "drop_s": _step_seconds(spans, "drop"),
        "commit_s": _step_seconds(spans, "read_and_drop")
        - _step_seconds(spans, "read")
        - _step_seconds(spans, "drop"),
        "detach_and_drop_s": _step_seconds(spans, "detach")
        + _step_seconds(spans, "read_and_drop")
        - _step_seconds(spans, "read"),
        "batches_s": _step_seconds(spans, "batches"),
        "contexts_s": _step_seconds(spans, "contexts"),
        "detach_attempts": sum(1 for step, _, _ in spans if step == "detach"),
        "slowest_writes": _slowest_writes(data["rows"], during, spans),
        "candidates_s": result["candidates_s"],
        "wal_mb": wal_bytes / 1e6,
        "size_before_mb": size_before,
        "size_after_mb": _size_mb(),
        "without": without,
        "during": with_prune,
        "p99_ratio": with_prune["p99"] / without["p99"] if without["p99"] else None,
        "window_from_prune_start": window(same_length),
    }
    found["window_p99_ratio"] = found["window_from_prune_start"]["p99"] / without["p99"]
    found["control"] = window(control)
    found["control_p99_ratio"] = without["p99"] / found["control"]["p99"]
    found["slowest_writes_window"] = _slowest_writes(data["rows"], same_length, spans, 12)
    found["slowest_writes_alone"] = _slowest_writes(data["rows"], baseline, spans, 12)
    log(f"  {layout}: {json.dumps(found, default=str)}")
    return found


def partitioned_main(
    args: argparse.Namespace, children: Children, log_dir: Path, results: dict, reused: dict | None
) -> None:
    """Today's batched delete on the plain table, then the same prune after partitioning it."""
    from audit_stream import partitions

    args.partition_size = -(-args.rows // PARTITIONS_PER_TABLE)
    results["setup"] = backlog(args, reused)
    layouts = args.layouts.split(",")
    runs = [layout_run(args, "plain", children, log_dir)] if "plain" in layouts else []
    if "partitioned" not in layouts:
        results["layouts"] = runs
        return
    log(f"partitioning {EVENTS}: {args.partition_size:,} ids per partition")
    # Emptied and its ids restarted first, so that the ranges start at id 1 (converted
    # with its rows, the whole table would become one first partition).
    execute(f"TRUNCATE {EVENTS}")
    execute(f"ALTER TABLE {EVENTS} ALTER pgh_id RESTART WITH 1")
    started = time.perf_counter()
    partitions.convert(partitions.Layout(EVENTS, args.partition_size, PARTITIONS_PER_TABLE + 2))
    results["convert_s"] = time.perf_counter() - started
    # The sequence goes on past the aged events (the writer's ids follow them); the
    # ranges it has passed get their time bound (layout_run moves it back with the events).
    highest = scalar(f"SELECT max(pgh_id) FROM {BACKLOG}")
    execute(f"ALTER TABLE {EVENTS} ALTER pgh_id RESTART WITH %s", [highest + 1])
    runs.append(layout_run(args, "partitioned", children, log_dir))
    results["layouts"] = runs
    print(json.dumps(runs, indent=2, default=str))


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
