"""Write-path cost of audit_stream, django-pghistory and no tracking, measured side by side.

Usage::

    python -m benchmarks.write              # full run, updates BENCHMARKS.md
    python -m benchmarks.write --quick      # smoke run: sizes / 10, 3 repetitions, no BENCHMARKS.md

The database named by ``--database-url`` or ``BENCH_DATABASE_URL`` (default
``postgres://postgres@127.0.0.1:5432/audit_stream_bench``) is dropped and
recreated. See BENCHMARKS.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import shlex
import sys
from importlib.metadata import version
from pathlib import Path

import django

ROOT = Path(__file__).resolve().parent.parent
#: Profiled with pg_stat_user_functions: the single-row cases.
PROFILED_WORKLOADS = ("insert_ctx", "save")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.write", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--repeat", type=int, help="repetitions; medians are reported (default 5, 3 with --quick)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="sizes / 10, 3 repetitions, BENCHMARKS.md untouched"
    )
    parser.add_argument("--single", type=int, default=2_000, help="single-row transactions (default 2000)")
    parser.add_argument("--bulk", type=int, default=20_000, help="rows of bulk statements (default 20000)")
    parser.add_argument(
        "--linearity",
        default="5000,20000,40000",
        help="bulk_create sizes for the linearity table (default 5000,20000,40000)",
    )
    parser.add_argument("--writers", type=int, default=8, help="concurrent writer processes (default 8)")
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per concurrent run (default 10)"
    )
    parser.add_argument("--variants", nargs="*", help="only these variants (untracked always runs)")
    parser.add_argument("--workloads", nargs="*", help="only these workloads (keys, e.g. insert_new_ctx)")
    parser.add_argument(
        "--update-migrations",
        action="store_true",
        help="regenerate benchapp's migrations first (after audit_stream's trigger SQL changed)",
    )
    parser.add_argument("--no-report", action="store_true", help="print only: no BENCHMARKS.md, no JSON")
    parser.add_argument(
        "--database-url",
        help="the benchmark database, dropped and recreated (default: BENCH_DATABASE_URL, else"
        " postgres://postgres@127.0.0.1:5432/audit_stream_bench); its name must contain 'bench'",
    )
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace):
    """The workload sizes the arguments ask for."""
    from benchmarks.workloads import Sizes

    sizes = Sizes(args.single, args.bulk, tuple(int(n) for n in args.linearity.split(",")))
    return sizes.scaled(0.1) if args.quick else sizes


def machine_info() -> dict:
    """What the numbers were measured on."""
    from benchmarks import db

    return {
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "pghistory": version("django-pghistory"),
        "pgtrigger": version("django-pgtrigger"),
        "psycopg": version("psycopg"),
        "postgresql": db.server_info(),
    }


def audit_stream_source() -> str:
    """Which audit_stream was measured: its version and a hash of its Python sources."""
    import audit_stream

    package = Path(audit_stream.__file__).parent
    digest = hashlib.sha1()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return f"{audit_stream.__version__}, sources sha1 {digest.hexdigest()[:12]}"


def setup_database(update_migrations: bool) -> list[int]:
    """Recreate and migrate the benchmark database; return the category ids."""
    from benchmarks import db

    if update_migrations:
        db.regenerate_migrations()
    db.recreate_database()
    db.migrate()
    from audit_stream import rowlog
    from benchmarks.benchapp.models import AsInvokerItem, Category, LogItem

    rowlog.init_logging(tables=[LogItem._meta.db_table])
    db.strip_security_definer(AsInvokerItem._meta.db_table)

    return db.create_categories(Category)


def rotated(items: list, shift: int) -> list:
    """``items`` rotated left by ``shift`` (round-robin order across repetitions)."""
    shift %= len(items)
    return items[shift:] + items[:shift]


def log(message: str) -> None:
    """Progress, on stderr."""
    print(message, file=sys.stderr, flush=True)


def run_repetition(rep: int, results, writers, category_ids: list[int]) -> None:
    """One repetition: every workload on every variant, then the concurrent writers."""
    from benchmarks import runner

    order = rotated(results.variants, rep)
    for workload in results.workloads:
        for variant in order:
            seconds = runner.measure(workload, variant, category_ids)
            results.samples.setdefault((workload.key, variant.key), []).append(seconds)
            results.cpu.setdefault((workload.key, variant.key), []).append(runner.last_cpu())
        log(f"  rep {rep + 1}: {workload.key:<18} " + _medians_line(results, workload.key))
    if writers is not None:
        settings = results.meta["settings"]
        for variant in order:
            tps = writers.run(variant, settings["duration"], category_ids)
            results.tps.setdefault(variant.key, []).append(tps)
        log(
            f"  rep {rep + 1}: {'concurrent':<18} "
            + "  ".join(f"{v}={t[-1]:,.0f}/s" for v, t in results.tps.items())
        )


def _medians_line(results, workload_key: str) -> str:
    return "  ".join(
        f"{v.key}={results.samples[(workload_key, v.key)][-1]:.3f}s"
        for v in results.variants
        if (workload_key, v.key) in results.samples
    )


def warm_up(results, category_ids: list[int]) -> None:
    """Run every workload once at a small size, unrecorded: plans, PL/pgSQL and Django caches."""
    from benchmarks import runner, workloads

    for workload in workloads.build(workloads.Sizes(single=50, bulk=500, linearity=())):
        for variant in results.variants:
            runner.measure(workload, variant, category_ids)


def run_profiles(results, category_ids: list[int], repeat: int) -> None:
    """Profile the functions of each tracked variant on :data:`PROFILED_WORKLOADS`, ``repeat`` times."""
    from benchmarks import fnprofile

    tracked = [v for v in results.variants if v.event_model is not None]
    profiled = [w for w in results.workloads if w.key in PROFILED_WORKLOADS]
    profiles = {(w.key, v.key): fnprofile.Profile(w, v.key) for w in profiled for v in tracked}
    for rep in range(repeat):
        for workload in profiled:
            for variant in rotated(tracked, rep):
                seconds, stats = fnprofile.profile(workload, variant, category_ids)
                profiles[(workload.key, variant.key)].seconds.append(seconds)
                profiles[(workload.key, variant.key)].runs.append(stats)
        log(f"  profile rep {rep + 1} done")
    results.profiles = list(profiles.values())


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the tables, write BENCHMARKS.md and the JSON results."""
    args = parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 5)
    duration = args.duration / 10 if args.quick else args.duration
    if args.database_url:
        if "bench" not in args.database_url.rsplit("/", 1)[-1]:
            raise SystemExit("refusing to drop a database whose name does not contain 'bench'")
        os.environ["BENCH_DATABASE_URL"] = args.database_url  # the writer processes inherit it
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    django.setup()

    from benchmarks import concurrency, notify, report, sections, variants, workloads

    sizes = sizes_from(args)
    now = datetime.datetime.now(datetime.UTC)
    category_ids = setup_database(args.update_migrations)
    notify.listen()
    meta = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks.write"
        + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:])),
        "machine": machine_info(),
        "audit_stream": audit_stream_source(),
        "notify_supported": notify.supported(),
        "load_average_start": os.getloadavg(),
        "settings": {
            "repeat": repeat,
            "single": sizes.single,
            "bulk": sizes.bulk,
            "linearity": list(sizes.linearity),
            "writers": args.writers,
            "duration": duration,
            "quick": args.quick,
        },
    }
    chosen = [w for w in workloads.build(sizes) if not args.workloads or w.key in args.workloads]
    results = report.Results(meta, variants.by_key(args.variants), chosen)
    writers = concurrency.Writers.start(args.writers) if args.writers else None
    log("warming up")
    warm_up(results, category_ids)
    try:
        for rep in range(repeat):
            run_repetition(rep, results, writers, category_ids)
    finally:
        if writers is not None:
            writers.close()
    log("profiling")
    run_profiles(results, category_ids, repeat)
    meta["load_average_end"] = os.getloadavg()

    section = report.markdown(results)
    print(section)
    print("\nCPU time (PostgreSQL backend + benchmark process):\n")
    print(report.cpu_table(results))
    if not args.no_report:
        suffix = "-quick" if args.quick else ""
        json_path = ROOT / "benchmarks" / "results" / f"write-{now:%Y-%m-%d}{suffix}.json"
        report.write_json(results, json_path)
        log(f"wrote {json_path.relative_to(ROOT)}")
        if not args.quick:
            sections.replace_section(report.HEADING, section)
            log("updated BENCHMARKS.md")


if __name__ == "__main__":
    main()
