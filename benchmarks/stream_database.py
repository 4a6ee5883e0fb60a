"""The stream benchmark's database and environment (``python -m benchmarks.stream``, benchmarks/stream.py).

Where it runs (the benchmark database, Redis, the settings of every process it
starts), how that database is created and migrated, what machine it runs on,
and the queries every measurement uses: counts, the exactly-once check, the
connection parameters of side connections.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_MODULE = "benchmarks.stream_settings"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/audit_stream_bench_stream"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
MIGRATIONS = Path(__file__).resolve().parent / "streamapp" / "migrations"
COMMAND = "python -m benchmarks.stream"

TRACKED = "streamapp_trackedrow"
PLAIN = "streamapp_plainrow"
EVENTS = "streamapp_trackedrowevent"
CHANGE = "audit_stream_change"
CHECKPOINT = "audit_stream_checkpoint"
CONTEXT = "audit_stream_context"
#: application_name of the worker's connections (the listener's is "audit_stream listener").
STREAM_APPLICATION_NAME = "bench stream"


# --------------------------------------------------------------------------- set-up


def configure_environment(args: argparse.Namespace) -> None:
    """Point this process (and every child it starts) at the benchmark database and Redis.

    Set explicitly, not with ``setdefault``: an inherited ``DATABASE_URL`` (the
    Makefile exports the demo's) must never be the database this drops.
    """
    name = args.database_url.rsplit("/", 1)[-1]
    if "bench" not in name:
        raise SystemExit(f"refusing to drop {name!r}: the benchmark database's name must contain 'bench'")
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
    os.environ["DATABASE_URL"] = args.database_url
    os.environ["REDIS_URL"] = args.redis_url
    os.environ["AUDIT_STREAM_SETTINGS"] = "{}"


def log(message: str) -> None:
    """Progress on stderr, with the time."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def recreate_database() -> None:
    """Drop and create the benchmark database from the ``postgres`` maintenance database."""
    import psycopg
    from django.conf import settings
    from django.db import connection
    from psycopg import sql

    connection.close()
    db = settings.DATABASES["default"]
    params = {"host": db["HOST"], "port": db["PORT"], "user": db["USER"], "password": db.get("PASSWORD")}
    params = {k: v for k, v in params.items() if v}
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        name = sql.Identifier(db["NAME"])
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))


def migrate(update_migrations: bool) -> None:
    """Apply the migrations, after checking streamapp's committed migrations match the trigger SQL."""
    import io

    from django.core.management import call_command

    if update_migrations:
        for path in MIGRATIONS.glob("0*.py"):
            path.unlink()
        call_command("makemigrations", "streamapp", verbosity=0)
    out = io.StringIO()
    try:
        call_command("makemigrations", "streamapp", check=True, dry_run=True, stdout=out)
    except SystemExit as exc:
        raise RuntimeError(
            "benchmarks/streamapp/migrations are out of date (audit_stream's trigger SQL changed):\n"
            f"{out.getvalue()}Regenerate them: {COMMAND} --update-migrations"
        ) from exc
    call_command("migrate", verbosity=0, interactive=False)


def machine_info() -> dict:
    """What the numbers were measured on."""
    import celery
    import django

    return {
        "nproc": os.cpu_count(),
        "postgresql": scalar("SHOW server_version"),
        "shared_buffers": scalar("SHOW shared_buffers"),
        "synchronous_commit": scalar("SHOW synchronous_commit"),
        "python": platform.python_version(),
        "django": django.__version__,
        "celery": celery.__version__,
        "git": _git_describe(),
    }


def _git_describe() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# --------------------------------------------------------------------------- database helpers


def execute(statement: str, params=None) -> list[tuple]:
    """Run one statement on the default connection; return its rows, if any."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def scalar(statement: str, params=None):
    """The single value a query returns."""
    return execute(statement, params)[0][0]


def reset_tables() -> None:
    """Empty every table the stream touches and flush dirty pages, so each run starts alike.

    Only call it with no stream process running (TRUNCATE waits for their locks).
    """
    tables = [TRACKED, PLAIN, EVENTS, CHANGE, CHECKPOINT, CONTEXT]
    execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY")
    for table in tables:
        execute(f"VACUUM ANALYZE {table}")
    execute("CHECKPOINT")


def flush_redis(url: str) -> None:
    """Forget queued tasks and pending-fold keys of earlier runs."""
    import redis

    redis.Redis.from_url(url).flushdb()


def counts() -> tuple[int, int]:
    """(events, Change rows of the event table)."""
    return tuple(
        execute(
            f"SELECT (SELECT count(*) FROM {EVENTS}), (SELECT count(*) FROM {CHANGE} WHERE event_table = %s)",
            [EVENTS],
        )[0]
    )


def wait_until_folded(timeout: float) -> float:
    """Wait until every event has a Change row; return how long that took."""
    start = time.monotonic()
    while True:
        events, changes = counts()
        if changes >= events:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"not folded after {timeout:.0f}s: {changes} of {events} events")
        time.sleep(0.05)


def verify_exactly_once(expected: int | None = None) -> int:
    """Check each event became exactly one Change row (and, if given, that there were ``expected``)."""
    events, changes, distinct, missing = execute(
        f"""SELECT (SELECT count(*) FROM {EVENTS}),
                   (SELECT count(*) FROM {CHANGE} WHERE event_table = %(t)s),
                   (SELECT count(DISTINCT event_id) FROM {CHANGE} WHERE event_table = %(t)s),
                   (SELECT count(*) FROM {EVENTS} AS e WHERE NOT EXISTS (
                        SELECT 1 FROM {CHANGE} AS c
                        WHERE c.event_table = %(t)s AND c.event_id = e.pgh_id))""",
        {"t": EVENTS},
    )[0]
    if not (events == changes == distinct and missing == 0) or (expected is not None and events != expected):
        raise RuntimeError(
            f"not folded exactly once: {events} events (expected {expected}), {changes} changes,"
            f" {distinct} distinct event ids, {missing} events without a change"
        )
    return events


def db_params() -> dict:
    """psycopg connection parameters of the benchmark database, for side connections."""
    from django.db import connection

    return {
        k: v for k, v in connection.get_connection_params().items() if k not in ("cursor_factory", "context")
    }
