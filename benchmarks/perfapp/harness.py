"""What ``benchmarks.retention`` and ``benchmarks.webhooks`` share.

Set-up (environment, database, migrations), child processes in their own
process groups (Celery worker, listener, writer, receiver), statistics and
reports (tables, JSON, one ``##`` section of BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
SETTINGS_MODULE = "benchmarks.perfapp.settings"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"

ITEMS = "perfapp_item"
EVENTS = "perfapp_itemevent"
EVENT_MODEL = "perfapp.ItemEvent"

#: Databases a benchmark must never drop, whatever it is told.
PROTECTED_DATABASES = {"audit_stream", "test_audit_stream", "as_main", "audit_stream_demo", "postgres"}


def log(message: str) -> None:
    """Progress on stderr, with the time."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def configure_environment(database_url: str, redis_url: str, audit_stream: dict) -> None:
    """Point this process (and every child it starts) at the benchmark's database and Redis.

    Set explicitly, not with ``setdefault``: an inherited ``DATABASE_URL`` (the
    Makefile exports the demo's) must never be the database that is dropped.
    """
    name = database_url.rsplit("/", 1)[-1]
    if "bench" not in name or name in PROTECTED_DATABASES:
        raise SystemExit(f"refusing to drop {name!r}: the benchmark database's name must contain 'bench'")
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
    os.environ["DATABASE_URL"] = database_url
    os.environ["REDIS_URL"] = redis_url
    os.environ["AUDIT_STREAM_SETTINGS"] = json.dumps(audit_stream)
    # SIGTERM unwinds like Ctrl-C, through every `finally` that stops a child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def recreate_database() -> None:
    """Drop and create the benchmark database from the ``postgres`` maintenance database."""
    import psycopg
    from django.conf import settings
    from django.db import connection
    from psycopg import sql

    connection.close()
    db = settings.DATABASES["default"]
    if db["NAME"] in PROTECTED_DATABASES or "bench" not in db["NAME"]:
        raise SystemExit(f"refusing to drop {db['NAME']!r}")
    params = {"host": db["HOST"], "port": db["PORT"], "user": db["USER"], "password": db.get("PASSWORD")}
    params = {k: v for k, v in params.items() if v}
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        name = sql.Identifier(db["NAME"])
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))


def migrate(update_migrations: bool, command: str) -> None:
    """Apply the migrations, after checking perfapp's committed migrations match the trigger SQL."""
    from django.core.management import call_command

    if update_migrations:
        for path in MIGRATIONS.glob("0*.py"):
            path.unlink()
        call_command("makemigrations", "perfapp", verbosity=0)
    out = io.StringIO()
    try:
        call_command("makemigrations", "perfapp", check=True, dry_run=True, stdout=out)
    except SystemExit as exc:
        raise RuntimeError(
            "benchmarks/perfapp/migrations are out of date (audit_stream's trigger SQL changed):\n"
            f"{out.getvalue()}Regenerate them: {command} --update-migrations"
        ) from exc
    call_command("migrate", verbosity=0, interactive=False)


def execute(statement: str, params=None) -> list[tuple]:
    """Run one statement on the default connection; return its rows, if any."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def scalar(statement: str, params=None):
    """The single value a query returns."""
    return execute(statement, params)[0][0]


def count(table: str, where: str = "TRUE", params=None) -> int:
    return scalar(f"SELECT count(*) FROM {table} WHERE {where}", params)


def vacuum(*tables: str) -> None:
    """VACUUM ANALYZE the tables, then CHECKPOINT: each run starts with clean pages."""
    for table in tables:
        execute(f"VACUUM ANALYZE {table}")
    execute("CHECKPOINT")


def insert_items(rows: int, per_statement: int) -> float:
    """``bulk_create`` ``rows`` tracked rows, ``per_statement`` per statement (and transaction); seconds."""
    from decimal import Decimal

    from benchmarks.perfapp.models import Item

    started = time.perf_counter()
    for start in range(0, rows, per_statement):
        n = min(per_statement, rows - start)
        Item.objects.bulk_create(
            Item(name=f"item {start + i}", price=Decimal("19.90"), stock=i, note="benchmark row")
            for i in range(n)
        )
    return time.perf_counter() - started


def insert_items_sql(rows: int, per_statement: int) -> float:
    """Insert ``rows`` tracked rows set-based (``INSERT ... SELECT generate_series``), ``per_statement``
    per statement (and transaction); seconds. The triggers fire as for any insert: one event a row.
    Faster than :func:`insert_items` by the ORM's per-row cost, for set-ups of millions of rows."""
    started = time.perf_counter()
    for start in range(0, rows, per_statement):
        n = min(per_statement, rows - start)
        execute(
            f"INSERT INTO {ITEMS} (name, price, stock, note)"
            " SELECT 'item ' || g, 19.90, g - %(start)s, 'benchmark row'"
            " FROM generate_series(%(start)s, %(end)s) AS g",
            {"start": start, "end": start + n - 1},
        )
    return time.perf_counter() - started


def machine_info() -> dict:
    """What the numbers were measured on."""
    import celery
    import django

    return {
        "nproc": os.cpu_count(),
        "postgresql": scalar("SHOW server_version"),
        "shared_buffers": scalar("SHOW shared_buffers"),
        "work_mem": scalar("SHOW work_mem"),
        "synchronous_commit": scalar("SHOW synchronous_commit"),
        "python": platform.python_version(),
        "django": django.__version__,
        "celery": celery.__version__,
        "git": _git_describe(),
        "audit_stream_sha1": sources_sha1(),
        "load_at_start": os.getloadavg(),
    }


def sources_sha1() -> str:
    """A hash of audit_stream's sources as they are now (the tree may have uncommitted changes)."""
    import hashlib

    digest = hashlib.sha1()
    for path in sorted((ROOT / "audit_stream").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _git_describe() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


# --------------------------------------------------------------------------- child processes


def child_env(audit_stream: dict | None = None, application_name: str = "bench child") -> dict:
    """The environment of a child: this process's benchmark settings, optionally other AUDIT_STREAM."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "BENCH_APPLICATION_NAME": application_name}
    if audit_stream is not None:
        env["AUDIT_STREAM_SETTINGS"] = json.dumps(audit_stream)
    return env


class Proc:
    """A child process in its own session (process group), logging to a file; always reaped by stop()."""

    def __init__(self, name: str, args: list[str], log_path: Path, env: dict, ready: str) -> None:
        self.name = name
        self.log_path = log_path
        self.ready = ready
        self._file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self._file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> str:
        """Wait for the ready line; fail if the process exits first. Returns the ready line."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.output().splitlines():
                if self.ready in line:
                    return line
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{self.output()[-3000:]}")
            time.sleep(0.05)

    def check(self, marker: str) -> None:
        """Fail with the log's tail if ``marker`` (e.g. Celery's "raised unexpected") is in the output."""
        text = self.output()
        if marker in text:
            at = text.index(marker)
            raise RuntimeError(f"{self.name} failed:\n{text[max(0, at - 2000) : at + 1000]}")

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; its exit code."""
        return self.popen.wait(timeout=timeout)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; always reap it."""
        if self.popen.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop on SIGTERM within {grace:.0f}s: SIGKILL")
        self._signal(signal.SIGKILL)  # leftovers of the group (Celery's pool children)
        self.popen.wait(timeout=30)
        self._file.close()

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)


class Children:
    """The children of a benchmark: stop() stops every one still running, in reverse order."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self._serial = 0

    def start(self, name: str, args: list[str], env: dict, ready: str, wait: bool = True) -> Proc:
        self._serial += 1
        proc = Proc(name, args, self.log_dir / f"{self._serial:02d}-{name}.log", env, ready)
        self.procs.append(proc)
        if wait:
            proc.wait_ready()
        return proc

    def worker(self, concurrency: int, audit_stream: dict | None = None) -> Proc:
        """``celery -A worker worker -c N``."""
        name = f"bench-{os.getpid()}-{self._serial + 1}@%h"
        args = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-l", "info"]
        args += [
            "-c",
            str(concurrency),
            "-n",
            name,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        return self.start("worker", args, child_env(audit_stream, "bench worker"), " ready.")

    def listener(self, audit_stream: dict | None = None) -> Proc:
        """``python -m worker.listen``."""
        args = [sys.executable, "-m", "worker.listen"]
        return self.start("listener", args, child_env(audit_stream, "bench listener"), "listener: active")

    def writer(self, rate: float, seconds: float, out: Path) -> Proc:
        """``python -m benchmarks.perfapp.writer``: single-row inserts at ``rate`` per second."""
        args = [sys.executable, "-m", "benchmarks.perfapp.writer", "--rate", str(rate)]
        args += ["--seconds", str(seconds), "--out", str(out)]
        return self.start("writer", args, child_env(None, "bench writer"), "writer: ready")

    def receiver(self, out: Path) -> tuple[Proc, int]:
        """``python -m benchmarks.perfapp.receiver`` on loopback; (process, port)."""
        args = [sys.executable, "-m", "benchmarks.perfapp.receiver", "--out", str(out)]
        proc = self.start("receiver", args, child_env(None, "bench receiver"), "receiver: listening")
        return proc, int(proc.wait_ready().rsplit(" ", 1)[1])

    def stop(self, proc: Proc | None = None) -> None:
        """Stop one child, or all of them."""
        for each in reversed(list(self.procs)):
            if proc is None or each is proc:
                try:
                    each.stop()
                finally:
                    self.procs.remove(each)


def read_writer(out: Path) -> dict:
    """A writer's results: ``rows`` of [start (epoch s), latency (s), pk, commit (DB epoch s)]."""
    data = json.loads(out.read_text())
    if not data["rows"]:
        raise RuntimeError(f"the writer wrote nothing ({out})")
    return data


# --------------------------------------------------------------------------- statistics


def percentile(ordered: list[float], q: float) -> float | None:
    """The q-quantile of sorted values, interpolated linearly."""
    if not ordered:
        return None
    k = (len(ordered) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarize_ms(seconds: list[float]) -> dict:
    """n, p50/p95/p99/max/mean in milliseconds."""
    ordered = sorted(s * 1000 for s in seconds)
    return {
        "n": len(ordered),
        "p50": percentile(ordered, 0.50),
        "p95": percentile(ordered, 0.95),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else None,
        "mean": sum(ordered) / len(ordered) if ordered else None,
    }


def fmt(value, spec: str = ",.0f") -> str:
    return "—" if value is None else format(value, spec)


def met(ok: bool) -> str:
    return "met" if ok else "**missed**"


# --------------------------------------------------------------------------- reports


def table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """A Markdown table; columns in ``right`` are right-aligned (all but the first by default)."""
    right = set(range(1, len(headers))) if right is None else right
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join("--:" if i in right else "---" for i in range(len(headers))) + "|")
    lines.extend("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)
    return "\n".join(lines)


def prose(text: str) -> str:
    """One paragraph from a wrapped triple-quoted string."""
    return " ".join(text.split())


def save_json(name: str, results: dict, quick: bool) -> Path:
    """``benchmarks/results/<name>-<date>[-quick].json``."""
    suffix = "-quick" if quick else ""
    path = ROOT / "benchmarks" / "results" / f"{name}-{results['date'][:10]}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"wrote {path.relative_to(ROOT)}")
    return path
