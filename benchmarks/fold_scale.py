"""The fold's cost per event at two history sizes: does it grow with the table?

Usage::

    python -m benchmarks.fold_scale                          # 30,000 and 300,000 events
    python -m benchmarks.fold_scale --sizes 30000,1000000 --no-report

Each size gets a fresh database, ``audit_stream_bench_fold_scale_<size>``
(``--database-url`` names the prefix; it must contain "bench"), filled as
``benchmarks.scale`` fills it (products inserted 100,000 to a statement, one
product updated ``--hot`` times in one transaction, 1% deleted), never
vacuumed nor analysed: the scale benchmark folds right after filling, as a
worker folds a burst. Then the history is folded in-process, one batch of
``--batch-size`` events per ``fold()`` call (``FOLD_LINGER`` 0), each batch
timed (wall time, and the CPU time of the PostgreSQL backend from
``/proc``: comparable on a shared machine, wall time is not).

Reported per size: events/s, backend CPU per event, the CPU of a batch in
the first and the last tenth of the fold (a fold whose cost grows with the
table is slower at its end), and the rows PostgreSQL read for the fold
(``pg_stat_user_tables``, ``pg_stat_user_indexes``) per event, by table and
index; plus ``EXPLAIN (ANALYZE, BUFFERS)`` of one batch three quarters of
the way (rolled back), written to the JSON result.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks import dashboard as base
from benchmarks import scale
from benchmarks.sections import replace_section

SECTION = "## Fold at scale (benchmarks/fold_scale.py)"
COMMAND = "python -m benchmarks.fold_scale"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/audit_stream_bench_fold_scale"
EVENTS = "testapp_productevent"
CHANGE = "audit_stream_change"
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="30000,300000", help="history sizes, comma-separated")
    parser.add_argument("--hot", type=int, default=20_000, help="events of the one long-lived product")
    parser.add_argument("--batch-size", type=int, default=5_000, help="events per fold batch")
    parser.add_argument(
        "--database-url", default=DEFAULT_DATABASE_URL, help="prefix of the databases: dropped and recreated!"
    )
    parser.add_argument("--no-report", action="store_true", help="print only: no BENCHMARKS.md, no JSON")
    parser.add_argument(
        "--without-counts",
        action="store_true",
        help="fold with the change feed's per-object counts triggers disabled (what they cost the fold)",
    )
    parser.add_argument(
        "--without-context-counts",
        action="store_true",
        help="fold with the change feed's per-context counts trigger disabled (what it costs the fold)",
    )
    args = parser.parse_args(argv)
    args.sizes = [int(size) for size in args.sizes.split(",")]
    return args


def _backend_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one PostgreSQL backend (same host)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _counters() -> dict[str, int]:
    """Rows read so far from the event table and the change feed, by table and by index."""
    base.execute("SELECT pg_stat_force_next_flush()")
    time.sleep(0.01)
    base.execute("SELECT pg_stat_clear_snapshot()")
    found = {}
    for name, seq, fetched in base.execute(
        "SELECT relname, coalesce(seq_tup_read, 0), coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables"
        " WHERE relname = ANY(%s)",
        [[EVENTS, CHANGE]],
    ):
        found[f"{name}: rows read by sequential scans"] = seq
        found[f"{name}: rows fetched by index scans"] = fetched
    for index, read in base.execute(
        "SELECT indexrelname, idx_tup_read FROM pg_stat_user_indexes WHERE relname = ANY(%s)",
        [[EVENTS, CHANGE]],
    ):
        found[f"index {index}: entries read"] = read
    return found


def _explain_next_batch(batch_size: int) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the fold's next batch, from its checkpoint; rolled back."""
    from django.db import connection, transaction

    from audit_stream.stream import batch, lanes
    from tests.testapp.models import ProductEvent

    done, target, position, high, floor = base.execute(
        "SELECT snapshot, target, position, high, floor FROM audit_stream_checkpoint"
        " WHERE event_table = %s AND lane = 0",
        [EVENTS],
    )[0]
    if target is None:
        return "(no interval under way)"
    window = {
        "done": done,
        "target": target,
        "position": position,
        "window_end": min(position + batch_size, high),
        "floor": floor,
        "limit": batch_size,
        **lanes.params(0, 1),
    }
    sql, params = batch.sql(ProductEvent, connection, [EVENTS], batch.IN_BATCH, window, None)
    with transaction.atomic():
        plan = "\n".join(row[0] for row in base.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params))
        transaction.set_rollback(True)
    return plan


def measure(args: argparse.Namespace, size: int) -> dict:
    """One fresh database of ``size`` events, folded batch by batch."""
    from django.db import connection
    from django.test.utils import override_settings

    from audit_stream.stream.fold import fold

    scale.use_database(scale.database_name(args, size))
    base.log(f"size {size:,}: recreating {connection.settings_dict['NAME']}")
    base.recreate_database()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    scale.write_history(size, min(args.hot, size // 2))
    events = base.scalar(f"SELECT count(*) FROM {EVENTS}")
    base.log(f"size {size:,}: {events:,} events written in {time.perf_counter() - started:.0f} s")
    if args.without_counts:
        for trigger in ("audit_stream_count_inserted", "audit_stream_count_deleted"):  # retention/counts.py
            base.execute(f"ALTER TABLE audit_stream_change DISABLE TRIGGER {trigger}")
    if args.without_context_counts:  # retention/references.py
        base.execute("ALTER TABLE audit_stream_change DISABLE TRIGGER audit_stream_refs_inserted")
    base.execute("CHECKPOINT")
    pid = base.scalar("SELECT pg_backend_pid()")
    before = _counters()
    batches, plan, folded = [], None, 0
    with override_settings(AUDIT_STREAM={"FOLD_LINGER": 0}):
        started = time.perf_counter()
        while True:
            if plan is None and folded >= events * 3 // 4:
                plan = _explain_next_batch(args.batch_size)
            cpu, wall = _backend_cpu_s(pid), time.perf_counter()
            result = fold(EVENTS, batch_size=args.batch_size, max_seconds=0)
            batches.append((result.folded, time.perf_counter() - wall, _backend_cpu_s(pid) - cpu))
            folded += result.folded
            if result.caught_up and not result.busy:
                break
        seconds = time.perf_counter() - started
    after = _counters()
    changes = base.scalar(f"SELECT count(*) FROM {CHANGE} WHERE event_table = %s", [EVENTS])
    if changes != events or folded != events:
        raise RuntimeError(f"{events} events, {folded} folded, {changes} changes: not exactly once")
    full = [(wall, cpu) for n, wall, cpu in batches if n == args.batch_size]
    tenth = max(len(full) // 10, 1)
    run = {
        "size": size,
        "events": events,
        "fold_seconds": seconds,
        "events_per_s": events / seconds,
        "backend_cpu_us_per_event": sum(cpu for _, _, cpu in batches) * 1e6 / events,
        "batch_cpu_ms_first_tenth": statistics.mean(cpu for _, cpu in full[:tenth]) * 1000,
        "batch_cpu_ms_last_tenth": statistics.mean(cpu for _, cpu in full[-tenth:]) * 1000,
        "batch_wall_ms_first_tenth": statistics.mean(wall for wall, _ in full[:tenth]) * 1000,
        "batch_wall_ms_last_tenth": statistics.mean(wall for wall, _ in full[-tenth:]) * 1000,
        "rows_per_event": {key: (after[key] - before.get(key, 0)) / events for key in after},
        "explain_three_quarters": plan,
        "load": float(Path("/proc/loadavg").read_text().split()[0]),
    }
    base.log(
        f"size {size:,}: {run['events_per_s']:,.0f} events/s, backend CPU"
        f" {run['backend_cpu_us_per_event']:.0f} µs/event; a batch's CPU"
        f" {run['batch_cpu_ms_first_tenth']:.0f} ms first tenth, {run['batch_cpu_ms_last_tenth']:.0f} ms last"
    )
    return run


def markdown(args: argparse.Namespace, runs: list[dict]) -> str:
    sizes = [run["size"] for run in runs]
    loads = ", ".join(f"{run['load']:.1f}" for run in runs)
    lines = [
        SECTION,
        "",
        f"Measured {dt.date.today().isoformat()} with `{COMMAND} --sizes {','.join(map(str, sizes))}`"
        f" (batches of {args.batch_size:,}, load average {loads}"
        " at the end of each fold, on 2 cores shared with other work: compare the CPU columns, not the wall"
        " times). History written as `benchmarks.scale` writes it, never vacuumed nor analysed.",
        "",
        "| | " + " | ".join(f"{size:,} events" for size in sizes) + " |",
        "|---" * (len(sizes) + 1) + "|",
        "| events/s (wall) | " + " | ".join(f"{run['events_per_s']:,.0f}" for run in runs) + " |",
        "| backend CPU per event | "
        + " | ".join(f"{run['backend_cpu_us_per_event']:.0f} µs" for run in runs)
        + " |",
        "| a batch's backend CPU, first → last tenth | "
        + " | ".join(
            f"{run['batch_cpu_ms_first_tenth']:.0f} → {run['batch_cpu_ms_last_tenth']:.0f} ms" for run in runs
        )
        + " |",
    ]
    keys = sorted({key for run in runs for key, value in run["rows_per_event"].items() if value >= 0.05})
    for key in keys:
        values = " | ".join(f"{run['rows_per_event'].get(key, 0):.2f}" for run in runs)
        lines.append(f"| {key}, per event | {values} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    base.configure(argparse.Namespace(database_url=args.database_url))
    import django

    django.setup()
    runs = [measure(args, size) for size in args.sizes]
    section = markdown(args, runs)
    print(section)
    for run in runs:
        print(f"--- EXPLAIN at {run['size']:,}, three quarters through:\n{run['explain_three_quarters']}\n")
    if not args.no_report:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"fold_scale-{dt.datetime.now():%Y-%m-%d-%H%M}.json"
        out.write_text(json.dumps(runs, indent=2))
        replace_section(SECTION, section)


if __name__ == "__main__":
    sys.exit(main())
