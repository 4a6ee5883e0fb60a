"""``prune_history --dry-run`` at a million events: its time per table, before and after a change.

Usage::

    python -m benchmarks.prune_scale --database-url postgres://.../audit_stream_bench_prune --events 1000000
    python -m benchmarks.prune_scale --reuse --before a87babb     # also time that revision's retention

The database (its name must contain "bench") is filled as ``benchmarks.scale``
fills a size (the same products, long-lived product, deletes, contexts and
webhook messages), except the fold: the change feed is written set-based,
one change per event in one statement (diff and snapshot left empty: retention
reads neither), and the checkpoint is set to a snapshot in which every event
is folded. That takes seconds where the fold takes many minutes on a shared
machine; the per-object counts are kept by their trigger as the fold's
inserts would keep them. Nothing is vacuumed; the tables are analysed.

Timed: ``retention.prune(dry_run=True, overrides=Policy(keep_last=10))``,
what ``prune_history --dry-run --keep-last 10`` runs, median of 5 after a
warm-up, with the seconds of each table. ``--before REV`` times
``audit_stream/retention.py`` of that git revision too, on the same database,
each run next to one of this checkout's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import dashboard as base

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/audit_stream_bench_prune"
REPEAT = 5

# The change feed of the product events, one statement; the counts trigger counts it.
_FEED_SQL = """
INSERT INTO audit_stream_change
    (event_table, event_id, model, object_id, label, context_id, created_at, diff, snapshot, transaction_id)
SELECT 'testapp_productevent', e.pgh_id, 'testapp.product', e.pgh_obj_id::text, e.pgh_label,
       e.pgh_context_id, e.pgh_created_at, '{}'::jsonb, '{}'::jsonb, e.pgh_xid
FROM testapp_productevent AS e
ORDER BY e.pgh_id
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.prune_scale", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--hot", type=int, default=20_000, help="events of the one long-lived product")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL, help="dropped and recreated!")
    parser.add_argument("--reuse", action="store_true", help="keep a database an earlier run filled")
    parser.add_argument("--before", help="a git revision whose audit_stream/retention.py is timed too")
    return parser.parse_args(argv)


def fold_set_based() -> None:
    """Every product event folded at once: the feed in one statement, the checkpoint past it."""
    from django.db import connection, transaction

    from audit_stream.stream import checkpoint

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_FEED_SQL)
        checkpoint.ensure(cursor, "testapp_productevent", 1)
    with transaction.atomic(), connection.cursor() as cursor:
        # A snapshot taken after the feed committed: every event's transaction is visible in it.
        cursor.execute(
            "UPDATE audit_stream_checkpoint SET snapshot = pg_current_snapshot()::text,"
            " folded = (SELECT count(*) FROM audit_stream_change) WHERE event_table = 'testapp_productevent'"
        )


def prepare(args: argparse.Namespace) -> None:
    from django.core.management import call_command

    from audit_stream.stream import fold
    from benchmarks import scale

    if args.reuse:
        try:
            base.scalar("SELECT made FROM bench_scale_made")
            base.log("reusing the database (migrated to this checkout)")
            call_command("migrate", verbosity=0)
            return
        except Exception:  # not filled to the end: fill it
            from django.db import connection

            connection.close()
    base.log(f"recreating the database with {args.events:,} events")
    base.recreate_database()
    call_command("migrate", verbosity=0)
    fold.fold_all = fold_set_based  # this run's only fold: see the module's docstring
    scale.fill(args.events, min(args.hot, args.events // 2), args.events)
    base.execute("ANALYZE")


def _module_at(revision: str):
    """``audit_stream/retention.py`` as it was at ``revision``, imported under a name of its own.

    Only a revision where retention was one module (before it became a package,
    whose modules import each other by their own names): for a later one, run
    this benchmark in a worktree of that revision on the same database.
    """
    shown = subprocess.run(
        ["git", "show", f"{revision}:audit_stream/retention.py"], capture_output=True, text=True
    )
    if shown.returncode != 0:
        raise SystemExit(
            f"--before {revision}: audit_stream/retention.py is not a file there (retention is a package"
            " since it was split). Time that revision from a worktree of it instead: git worktree add"
            f" /tmp/before {revision}, then run this benchmark there with --reuse on the same database."
        )
    source = shown.stdout
    path = os.path.join(tempfile.mkdtemp(), "retention_before.py")
    with open(path, "w") as out:
        out.write(source)
    spec = importlib.util.spec_from_file_location("audit_stream_retention_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


def _time(module) -> dict:
    """Median seconds of a dry run with keep_last 10, in total and per table, and its counts."""
    overrides = module.Policy(keep_last=10)
    module.prune(dry_run=True, overrides=overrides)  # warm-up
    totals, per_table, rows = [], {}, {}
    for _ in range(REPEAT):
        started = time.perf_counter()
        report = module.prune(dry_run=True, overrides=overrides)
        totals.append(time.perf_counter() - started)
        for table, seconds in report.seconds.items():
            per_table.setdefault(table, []).append(seconds)
        rows = report.rows
    return {
        "seconds": statistics.median(totals),
        "tables": {table: statistics.median(values) for table, values in per_table.items()},
        "rows": {table: n for table, n in rows.items() if n},
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    base.configure(argparse.Namespace(database_url=args.database_url))
    import django

    django.setup()
    from audit_stream import retention

    prepare(args)
    events = base.scalar("SELECT count(*) FROM testapp_productevent")
    base.log(f"{events:,} events, {base.scalar('SELECT count(*) FROM audit_stream_change'):,} changes")
    results = {"events": events, "load": os.getloadavg(), "after": _time(retention)}
    base.log(f"after: {results['after']}")
    if args.before:
        results["before"] = _time(_module_at(args.before))
        base.log(f"before: {results['before']}")
        results["after again"] = _time(retention)
    results["load"] = [results["load"], os.getloadavg()]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
