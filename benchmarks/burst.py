"""A burst into a fresh table, folded with and without planner statistics (``benchmarks.stream --burst``).

Usage::

    python -m benchmarks.stream --burst                 # 200,000 rows, each layout, 2 rounds
    python -m benchmarks.stream --burst --rows 20000 --rounds 1 --no-report

Issue 19: "the fold must not depend on fresh planner statistics". A burst into
a young or quiet table is when the fold is needed most, and autovacuum (off on
this cluster) analyses a table only later: the planner then sees a table it
has never measured. Each scenario runs on a database created for it
(``audit_stream_bench_stream_burst`` by default, ``--database-url``): migrate,
``rows`` tracked rows inserted with ``bulk_create`` (5,000 per transaction),
then, in "analysed" scenarios only, ``VACUUM ANALYZE`` of the event table;
then ``fold()`` in-process until caught up (``FOLD_LINGER`` 0, the default
batch size). The event table's rows read by sequential scans and fetched by
index scans during the fold come from ``pg_stat_user_tables`` (all its
partitions).

Layouts: "plain" (one table) and "partitioned" (the event table and the
change feed declared in ``PARTITIONS``, ``--partition-size`` ids each). The
scenarios alternate, ``--rounds`` times, so a load change on the shared
machine touches every one alike; each result is checked: every event became
exactly one ``Change``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

from benchmarks.sections import replace_section
from benchmarks.stream_database import (
    DEFAULT_REDIS_URL,
    EVENTS,
    ROOT,
    configure_environment,
    execute,
    log,
    machine_info,
    migrate,
    recreate_database,
    scalar,
    verify_exactly_once,
)
from benchmarks.stream_fold_throughput import create_backlog

SECTION = "## Fold of a burst, without and with planner statistics (benchmarks/stream.py --burst)"
COMMAND = "python -m benchmarks.stream --burst"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/audit_stream_bench_stream_burst"

#: (name, partitioned, analysed)
SCENARIOS = [
    ("plain, no statistics", False, False),
    ("plain, after VACUUM ANALYZE", False, True),
    ("partitioned, no statistics", True, False),
    ("partitioned, after VACUUM ANALYZE", True, True),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--burst", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=200_000, help="rows inserted (one event each)")
    parser.add_argument("--rounds", type=int, default=2, help="times each scenario runs, alternating")
    parser.add_argument("--partition-size", type=int, default=50_000, help="ids per partition")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL, help="dropped and recreated!")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="not used: no process starts")
    parser.add_argument("--no-report", action="store_true", help="print only: no BENCHMARKS.md, no JSON")
    parser.add_argument("--only", choices=["plain", "partitioned"], help="one layout only")
    return parser.parse_args(argv)


def _partitions(args: argparse.Namespace) -> dict:
    layout = {"size": args.partition_size, "ahead": 2}
    return {"PARTITIONS": {"streamapp.TrackedRowEvent": layout, "audit_stream.Change": layout}}


def _counters() -> tuple[int, int, int]:
    """(sequential scans, rows they read, rows fetched by index scans) of the event table (its partitions)."""
    execute("SELECT pg_stat_force_next_flush()")
    time.sleep(0.01)
    execute("SELECT pg_stat_clear_snapshot()")
    return tuple(
        execute(
            "SELECT coalesce(sum(seq_scan), 0)::bigint, coalesce(sum(seq_tup_read), 0)::bigint,"
            " coalesce(sum(idx_tup_fetch), 0)::bigint FROM pg_stat_user_tables"
            " WHERE relname = %s OR relname LIKE %s",
            [EVENTS, EVENTS + "\\_%"],
        )[0]
    )


def scenario(args: argparse.Namespace, name: str, partitioned: bool, analysed: bool) -> dict:
    """One fresh database, one burst, one fold until caught up."""
    from django.test.utils import override_settings

    from audit_stream.stream.fold import fold

    settings = _partitions(args) if partitioned else {}
    recreate_database()
    with override_settings(AUDIT_STREAM=settings):
        migrate(False)  # migrate partitions what PARTITIONS declares
    started = time.perf_counter()
    create_backlog(args.rows)
    insert_seconds = time.perf_counter() - started
    if analysed:
        execute(f"VACUUM ANALYZE {EVENTS}")
    statistics = scalar("SELECT count(*) FROM pg_stats WHERE tablename LIKE %s", [EVENTS + "%"])
    execute("CHECKPOINT")
    before = _counters()
    with override_settings(AUDIT_STREAM={**settings, "FOLD_LINGER": 0}):
        started = time.perf_counter()
        folded = batches = 0
        while True:
            result = fold(EVENTS, max_seconds=3600)
            folded += result.folded
            batches += 1
            if result.caught_up and not result.busy:
                break
        seconds = time.perf_counter() - started
    after = _counters()
    verify_exactly_once(args.rows)
    run = {
        "scenario": name,
        "partitioned": partitioned,
        "analysed": analysed,
        "statistics_rows": statistics,
        "events": folded,
        "insert_seconds": insert_seconds,
        "fold_seconds": seconds,
        "events_per_s": folded / seconds,
        "seq_scans": after[0] - before[0],
        "seq_rows_read": after[1] - before[1],
        "index_rows_fetched": after[2] - before[2],
        "load": _load(),
    }
    log(
        f"{name}: {run['events_per_s']:,.0f} events/s ({seconds:.1f} s); seq rows read"
        f" {run['seq_rows_read']:,}, index rows fetched {run['index_rows_fetched']:,}"
    )
    return run


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def table(runs: list[dict]) -> str:
    lines = [
        "| scenario | round | events/s | fold s | rows read by seq. scans | rows fetched by index | load |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    rounds: dict[str, int] = {}
    for run in runs:
        rounds[run["scenario"]] = rounds.get(run["scenario"], 0) + 1
        lines.append(
            f"| {run['scenario']} | {rounds[run['scenario']]} | {run['events_per_s']:,.0f}"
            f" | {run['fold_seconds']:.1f} | {run['seq_rows_read']:,} | {run['index_rows_fetched']:,}"
            f" | {run['load']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.quick = True
    configure_environment(args)
    import django

    django.setup()
    chosen = [s for s in SCENARIOS if args.only is None or s[1] == (args.only == "partitioned")]
    log(f"database {args.database_url}: {len(chosen)} scenarios x {args.rounds}, {args.rows:,} rows")
    runs = [scenario(args, *s) for _ in range(args.rounds) for s in chosen]
    results = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "args": {k: v for k, v in vars(args).items() if k not in ("database_url", "redis_url")},
        "runs": runs,
    }
    print("\n" + table(runs))
    if args.no_report:
        return
    path = ROOT / "benchmarks" / "results" / f"burst-{results['date'][:10]}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"wrote {path.relative_to(ROOT)}")
    replace_section(SECTION, markdown(results))


def markdown(results: dict) -> str:
    a = results["args"]
    return "\n\n".join(
        [
            SECTION,
            f"Measured {results['date']} with `{COMMAND}` ({a['rows']:,} rows, {a['rounds']} rounds,"
            f" partitions of {a['partition_size']:,} ids; PostgreSQL {results['machine']['postgresql']},"
            f" {results['machine']['nproc']} cores shared with other sessions' test suites and benchmarks:"
            " the load average is in the table). Each row is a database created for it; see"
            " benchmarks/burst.py for the method.",
            table(results["runs"]),
        ]
    )


if __name__ == "__main__":
    main()
