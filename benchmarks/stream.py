"""The stream benchmark: fold throughput, commit-to-Change latency, and what the stream costs writers.

Usage::

    python -m benchmarks.stream            # full run (8-10 min; +2 at most waiting for a quiet machine)
    python -m benchmarks.stream --quick    # smoke run (about 2 minutes): smaller sizes, JSON only
    python -m benchmarks.stream --render benchmarks/results/stream-<date>.json   # rewrite the section only
    python -m benchmarks.stream --lanes 1,2,4 # fold lanes side by side only (benchmarks/lanes.py)
    python -m benchmarks.stream --burst    # a burst folded without and with statistics (benchmarks/burst.py)

It drops and recreates the database ``audit_stream_bench_stream`` and flushes
Redis database 14 (``--database-url``, ``--redis-url``), and starts real
stream processes (``celery -A worker worker`` and ``python -m worker.listen``)
as children in their own process groups, which are always killed at the end.

Three measurements (see the "Stream" section of BENCHMARKS.md):

1. fold throughput: ``audit_stream.stream.fold.fold()`` in-process on a
   backlog, per batch size, with an ``EXPLAIN ANALYZE`` breakdown of one
   batch; and a burst folded by a real worker woken by the real listener;
2. commit-to-Change latency at a steady rate of single-row transactions,
   with NOTIFY and in poll-only mode, and the NOTIFY rate past the fold
   task's ``max_seconds`` under steady writes;
3. write throughput of 8 concurrent writers: untracked, tracked without
   stream processes, and tracked with the listener and worker running, with
   NOTIFY and in poll-only mode.

Every run checks that each event became exactly one ``Change`` row.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import datetime as dt
import json
import math
import multiprocessing
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

from benchmarks.sections import replace_section

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_MODULE = "benchmarks.stream_settings"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/audit_stream_bench_stream"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
MIGRATIONS = Path(__file__).resolve().parent / "streamapp" / "migrations"
SECTION = "## Stream (benchmarks/stream.py)"
COMMAND = "python -m benchmarks.stream"

TRACKED = "streamapp_trackedrow"
PLAIN = "streamapp_plainrow"
EVENTS = "streamapp_trackedrowevent"
CHANGE = "audit_stream_change"
CHECKPOINT = "audit_stream_checkpoint"
CONTEXT = "audit_stream_context"
#: application_name of the worker's connections (the listener's is "audit_stream listener").
STREAM_APPLICATION_NAME = "bench stream"

FOLD_TARGET = 10_000  # events/s
NOTIFY_P99_TARGET_MS = 250.0
POLL_SLACK_MS = 100.0  # poll-only p99 target: poll interval + this
#: A concurrent-writer run is disturbed when other programs used more of the machine than this.
MAX_OTHER_LOAD = 0.10

#: Latency modes: (name, AUDIT_STREAM settings for the worker and listener).
LATENCY_MODES = [
    ("NOTIFY on, poll 1.0 s", {}),
    ("NOTIFY off, poll 1.0 s", {"NOTIFY": False}),
    ("NOTIFY off, poll 0.25 s", {"NOTIFY": False, "POLL_INTERVAL": 0.25}),
]
#: Concurrent-writer variants: (name, table written, AUDIT_STREAM settings).
#: ``None``: no stream process runs (the events are folded after the run).
WRITE_VARIANTS = [
    ("untracked", PLAIN, {}),
    ("tracked, no stream processes", TRACKED, None),
    ("tracked, NOTIFY on", TRACKED, {}),
    ("tracked, NOTIFY off", TRACKED, {"NOTIFY": False}),
]


# --------------------------------------------------------------------------- set-up


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; ``--quick`` scales every size and duration down."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes, 1 repetition, BENCHMARKS.md untouched"
    )
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL, help="dropped and recreated!")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="flushed!")
    parser.add_argument("--no-report", action="store_true", help="print only: no BENCHMARKS.md, no JSON")
    parser.add_argument(
        "--render", metavar="JSON", help="measure nothing: print and write BENCHMARKS.md from a saved result"
    )
    parser.add_argument(
        "--update-migrations", action="store_true", help="regenerate streamapp's migrations first"
    )
    parser.add_argument(
        "--lanes",
        type=lambda text: [int(n) for n in text.split(",")],
        metavar="N,N,...",
        help="measure only the fold throughput of one table folded in N lanes by N workers, for each N"
        " side by side (benchmarks/lanes.py)",
    )
    parser.add_argument("--lanes-repeat", type=int, default=3, help="runs of each N, interleaved (--lanes)")
    parser.add_argument("--lanes-batch", type=int, default=5_000, help="fold batch size (--lanes)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.backlog = 20_000 if quick else 200_000
    args.batch_sizes = [1_000, 5_000, 20_000]
    args.burst = 5_000 if quick else 50_000
    args.latency_rates = [200, 1_000]
    args.latency_seconds = 5.0 if quick else 20.0
    args.writers = 8
    args.write_seconds = 3.0 if quick else 10.0
    args.write_repeat = 1 if quick else 3
    args.write_retries = 0 if quick else 3
    args.quiet_budget = 0.0 if quick else 120.0
    args.steady_seconds = 0.0 if quick else 45.0
    return args


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


# --------------------------------------------------------------------------- stream processes


def _stat_fields(path: Path) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, ...), if it exists."""
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _cpu_from_stat(fields: list[str], children: bool = False) -> float:
    """utime + stime (and the reaped children's cutime + cstime), in seconds."""
    ticks = sum(int(f) for f in fields[11 : 15 if children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float | None:
    """CPU seconds used so far by a process (``None`` once it is gone)."""
    fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    return _cpu_from_stat(fields) if fields else None


class Proc:
    """A child process in its own process group (session), logging to a file."""

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

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait for the process's ready line; fail if it exits first."""
        deadline = time.monotonic() + timeout
        while self.ready not in self.output():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{self.output()[-3000:]}")
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        """User + system CPU time of every live process of the group (and its reaped children)."""
        total = 0.0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            fields = _stat_fields(stat)
            if fields and int(fields[2]) == self.popen.pid:
                total += _cpu_from_stat(fields, children=True)
        return total

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; always reap it."""
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


class Stack:
    """A Celery worker and the listener, started with one ``AUDIT_STREAM`` setting."""

    def __init__(self, name: str, settings: dict, log_dir: Path, redis_url: str, concurrency: int = 1):
        self.name = name
        self.settings = settings
        self.log_dir = log_dir
        self.redis_url = redis_url
        self.concurrency = concurrency
        self.procs: list[Proc] = []

    def env(self) -> dict:
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
            "DATABASE_URL": os.environ["DATABASE_URL"],
            "REDIS_URL": self.redis_url,
            "AUDIT_STREAM_SETTINGS": json.dumps(self.settings),
            "BENCH_APPLICATION_NAME": STREAM_APPLICATION_NAME,
            "PYTHONUNBUFFERED": "1",
        }

    def __enter__(self) -> Stack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start(self) -> None:
        slug = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")
        worker = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-l", "info",
                  "-c", str(self.concurrency), "-n", f"bench-{slug}@%h",
                  "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
        self.procs.append(Proc("worker", worker, self.log_dir / f"{slug}-worker.log", self.env(), " ready."))
        self.procs[-1].wait_ready()
        listener = [sys.executable, "-m", "worker.listen"]
        self.procs.append(
            Proc("listener", listener, self.log_dir / f"{slug}-listener.log", self.env(), "listener: active")
        )
        self.procs[-1].wait_ready()
        self._wait_for_wakeup_flag()

    def _wait_for_wakeup_flag(self, timeout: float = 10.0) -> None:
        """NOTIFY on: the listener's first poll arms the flag; off: it disarms it."""
        from audit_stream.stream import wakeup

        want = self.settings.get("NOTIFY", True)
        deadline = time.monotonic() + timeout
        while wakeup.is_armed() != want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the listener did not {'arm' if want else 'disarm'} the wake-up flag")
            time.sleep(0.05)

    def fold_tasks(self) -> tuple[int, int]:
        """(fold tasks finished, events they reported) from the worker's log."""
        if not self.procs:
            return 0, 0
        folded = [int(n) for n in re.findall(r"folded (\d+) events of", self.procs[0].output())]
        return len(folded), sum(folded)

    def cpu_seconds(self) -> float:
        """CPU time used so far by the worker and the listener, children included."""
        return sum(proc.cpu_seconds() for proc in self.procs)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs = []


# --------------------------------------------------------------------------- observers


class NotifyCounter(threading.Thread):
    """LISTENs on the stream's channel on its own connection and records when each NOTIFY arrived."""

    def __init__(self, channel: str = "audit_stream") -> None:
        super().__init__(daemon=True)
        self.channel = channel
        self.times: list[float] = []
        self._stop_event = threading.Event()
        self._ready = threading.Event()

    def run(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(autocommit=True, **db_params()) as conn:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            self._ready.set()
            while not self._stop_event.is_set():
                for _ in conn.notifies(timeout=0.2):
                    self.times.append(time.time())

    def __enter__(self) -> NotifyCounter:
        self.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._stop_event.set()
        self.join(5)

    def between(self, start: float, end: float) -> int:
        """Notifications received in [start, end] (time.time())."""
        return sum(1 for t in self.times if start <= t <= end)


class VisibilityProbe(threading.Thread):
    """Samples ``max(audit_stream_change.id)`` with the DB clock every ``interval`` seconds.

    Change ids are drawn in fold order and one fold per table runs at a time,
    so a Change row was visible (committed) at the first sample whose max id
    reaches it: an upper bound on its visibility time, ``interval`` coarse.
    """

    SQL = f"SELECT extract(epoch FROM clock_timestamp())::float8, coalesce(max(id), 0) FROM {CHANGE}"

    def __init__(self, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.times: list[float] = []
        self.max_ids: list[int] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(autocommit=True, **db_params()) as conn:
            while not self._stop_event.is_set():
                ts, max_id = conn.execute(self.SQL).fetchone()
                self.times.append(ts)
                self.max_ids.append(max_id)
                self._stop_event.wait(self.interval)

    def __enter__(self) -> VisibilityProbe:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop_event.set()
        self.join(5)

    def seen_at(self, change_id: int) -> float | None:
        """DB time of the first sample in which ``change_id`` was visible."""
        i = bisect.bisect_left(self.max_ids, change_id)
        return self.times[i] if i < len(self.times) else None


class BackendCpu(threading.Thread):
    """CPU time of the benchmark database's PostgreSQL backends, sampled every ``interval`` seconds.

    Backends are listed by ``pg_stat_activity`` and read in /proc (PostgreSQL
    runs on this machine). A Celery task may open and close its own
    connection, so backends come and go: each one's last sample counts, less
    what it had used when the measurement started; the last ``interval`` of
    a backend that exits is missed.
    """

    SQL = "SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database()"

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.apps: dict[int, str] = {}
        self._stop_event = threading.Event()
        self._started = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(autocommit=True, **db_params()) as conn:
            self._sample(conn, initial=True)
            self._started.set()
            while not self._stop_event.wait(self.interval):
                self._sample(conn)
            self._sample(conn)

    def _sample(self, conn, initial: bool = False) -> None:
        for pid, app in conn.execute(self.SQL).fetchall():
            cpu = process_cpu(pid)
            if cpu is not None:
                self.first.setdefault(pid, cpu if initial else 0.0)
                self.last[pid] = cpu
                self.apps[pid] = app

    def __enter__(self) -> BackendCpu:
        self.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._stop_event.set()
        self.join(5)

    def seconds(self, apps: tuple[str, ...] | None = None) -> float:
        """CPU seconds of the backends (of these application names only, if given)."""
        return sum(
            self.last[pid] - self.first[pid] for pid in self.last if apps is None or self.apps[pid] in apps
        )


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (not idle, not waiting for I/O) since boot."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class QuietWaiter:
    """Waits, before a run, until other programs leave the machine alone, within a total budget.

    Called with nothing of the benchmark running, so the machine's busy time
    over a second is other programs'. The budget is shared by every run.
    """

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.waited = 0.0

    def wait(self, window: float = 1.0) -> float:
        """Wait until a ``window`` has less than ``MAX_OTHER_LOAD`` busy; return the last load seen."""
        if self.budget <= 0:
            return 0.0
        while True:
            before = machine_busy_seconds()
            time.sleep(window)
            load = (machine_busy_seconds() - before) / (window * (os.cpu_count() or 1))
            if load < MAX_OTHER_LOAD or self.waited >= self.budget:
                return load
            self.waited += window


class CpuAccount:
    """Who used the machine's CPU during a run: the stream, the rest of this benchmark, other programs.

    "Other" is the machine's busy time less this process, the writer
    processes, the stream processes and the benchmark database's backends:
    other sessions sharing the machine (and PostgreSQL's own background
    processes). A run where it is large was disturbed.
    """

    STREAM_APPS = (STREAM_APPLICATION_NAME, "audit_stream listener")

    def __init__(self, stack: Stack | None = None, pool=None) -> None:
        self.stack = stack
        self.pids = [os.getpid()] + ([worker.pid for worker in pool._pool] if pool else [])
        self.backends = BackendCpu()

    def _stream(self) -> float:
        return self.stack.cpu_seconds() if self.stack else 0.0

    def _ours(self) -> float:
        return sum(process_cpu(pid) or 0.0 for pid in self.pids) + self._stream()

    def __enter__(self) -> CpuAccount:
        self.backends.__enter__()
        self.start = (time.monotonic(), machine_busy_seconds(), self._ours(), self._stream())
        return self

    def __exit__(self, *exc) -> None:
        self.end = (time.monotonic(), machine_busy_seconds(), self._ours(), self._stream())
        self.backends.__exit__(*exc)

    def result(self) -> dict:
        wall, busy, ours, stream = (b - a for a, b in zip(self.start, self.end, strict=True))
        other = busy - ours - self.backends.seconds()
        return {
            "stream_cpu_seconds": stream,
            "backend_cpu_seconds": self.backends.seconds(self.STREAM_APPS),
            "other_load": max(0.0, other) / (wall * (os.cpu_count() or 1)),
        }


# --------------------------------------------------------------------------- writer processes


def _init_writer() -> None:
    """Writer process start-up: configure Django and connect once."""
    os.environ["BENCH_APPLICATION_NAME"] = "bench writer"
    import django

    django.setup()
    from django.db import connection

    connection.ensure_connection()


def _sleep_until(wall_time: float) -> None:
    delay = wall_time - time.time()
    if delay > 0:
        time.sleep(delay)


def _new_row(model, writer: int, i: int):
    return model(name=f"writer {writer} row {i}", price=Decimal("19.90"), stock=i, note="stream benchmark")


def paced_writes(rate: float, seconds: float, start_at: float, phase: float, writer: int) -> dict:
    """Insert one tracked row per transaction at ``rate`` per second, on a fixed schedule.

    Transaction i is due at ``t0 + (i + phase) / rate`` (monotonic clock); a
    late one is sent at once, so the achieved rate shows whether the writer
    kept up. Each is one autocommit ``INSERT ... RETURNING id, clock_timestamp()``:
    the server commits right after evaluating it, in the same round trip, so
    that timestamp is the commit time (less the trigger's and the WAL flush's
    fraction of a millisecond) on the database's clock, whatever the writer's
    scheduling. ``time.time()`` right after the commit is kept too, to show
    how late a client-side "after commit" reading can be on a busy machine.
    """
    from django.db import connection

    count = int(rate * seconds)
    commits: list[tuple[int, float, float]] = []
    max_late = 0.0
    insert = (
        f"INSERT INTO {TRACKED} (name, price, stock, note) VALUES (%s, %s, %s, %s)"
        " RETURNING id, extract(epoch FROM clock_timestamp())::float8"
    )
    _sleep_until(start_at)
    t0 = time.monotonic()
    with connection.cursor() as cursor:
        for i in range(count):
            delay = t0 + (i + phase) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                max_late = max(max_late, -delay)
            cursor.execute(insert, [f"writer {writer} row {i}", Decimal("19.90"), i, "stream benchmark"])
            pk, committed = cursor.fetchone()
            commits.append((pk, committed, time.time()))
    return {"commits": commits, "elapsed": time.monotonic() - t0, "max_late": max_late}


def timed_writes(table: str, seconds: float, start_at: float, writer: int) -> int:
    """Insert one row per transaction, as fast as possible, for ``seconds``; return the count."""
    from benchmarks.streamapp.models import PlainRow, TrackedRow

    model = TrackedRow if table == TRACKED else PlainRow
    _sleep_until(start_at)
    deadline = time.monotonic() + seconds
    rows = 0
    while time.monotonic() < deadline:
        _new_row(model, writer, rows).save()
        rows += 1
    return rows


def writer_pool(count: int):
    """``count`` spawned writer processes, each with ``django.setup()`` and a connection."""
    ctx = multiprocessing.get_context("spawn")
    return ctx.Pool(count, initializer=_init_writer)


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
    """p50/p95/p99/max/mean in milliseconds, and how many were negative."""
    ordered = sorted(s * 1000 for s in seconds)
    return {
        "n": len(ordered),
        "p50": percentile(ordered, 0.50),
        "p95": percentile(ordered, 0.95),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else None,
        "mean": statistics.fmean(ordered) if ordered else None,
        "negative": sum(1 for v in ordered if v < 0),
    }


# --------------------------------------------------------------------------- 1. fold throughput


def create_backlog(rows: int, per_transaction: int = 5_000) -> None:
    """Insert ``rows`` tracked rows with ``bulk_create``, ``per_transaction`` per transaction."""
    from benchmarks.streamapp.models import TrackedRow

    for start in range(0, rows, per_transaction):
        n = min(per_transaction, rows - start)
        TrackedRow.objects.bulk_create(_new_row(TrackedRow, 0, start + i) for i in range(n))


def update_backlog(rows: int, per_transaction: int = 5_000) -> None:
    """Update every tracked row once (one event each), ``per_transaction`` rows per transaction."""
    for start in range(0, rows, per_transaction):
        execute(
            f"UPDATE {TRACKED} SET stock = stock + 1, note = 'updated' WHERE id > %s AND id <= %s",
            [start, start + per_transaction],
        )


def forget_folds() -> None:
    """Make every event unfolded again: no Change rows, no checkpoint."""
    execute(f"TRUNCATE {CHANGE}, {CHECKPOINT} RESTART IDENTITY")
    execute(f"VACUUM ANALYZE {CHANGE}")
    execute("CHECKPOINT")


def time_fold(batch_size: int, quiet: QuietWaiter) -> dict:
    """Fold the table in-process until caught up; events/s and time per batch.

    ``FOLD_LINGER`` is 0 here: a caught-up fold would otherwise wait that long
    for more work before returning, which is not folding time.
    """
    from django.test.utils import override_settings

    from audit_stream.stream.fold import fold

    folded_before = counts()[1]
    quiet.wait()
    with override_settings(AUDIT_STREAM={"FOLD_LINGER": 0}), CpuAccount() as account:
        start = time.perf_counter()
        folded = 0
        while True:
            result = fold(EVENTS, batch_size=batch_size, max_seconds=3600)
            folded += result.folded
            if result.caught_up and not result.busy:
                break
        seconds = time.perf_counter() - start
    verify_exactly_once()
    batches = math.ceil(folded / batch_size) or 1
    return {
        "events": folded,
        "changes_before": folded_before,
        "seconds": seconds,
        "events_per_s": folded / seconds,
        "ms_per_batch": seconds * 1000 / batches,
        "other_load": account.result()["other_load"],
    }


def _plan_nodes(plan: dict):
    """The nodes of a JSON plan, depth first, skipping SubPlans (their time is in their parent)."""
    yield plan
    for child in plan.get("Plans", []):
        if child.get("Parent Relationship") != "SubPlan":
            yield from _plan_nodes(child)


def _inclusive_ms(node: dict) -> float:
    return node["Actual Total Time"] * node.get("Actual Loops", 1)


def explain_fold_batch(batch_size: int) -> dict | None:
    """EXPLAIN ANALYZE one fold batch from the middle of the unfolded events; rolled back.

    The statement is the fold's own, built by ``audit_stream.stream.batch.sql``
    for a window of ``batch_size`` ids of the table's one lane. Splits the
    execution time into the steps of the statement, from the plan's
    inclusive node times (a plan whose shape changed only skips the breakdown).
    """
    from django.apps import apps
    from django.db import connection, transaction

    from audit_stream.stream import batch, lanes

    model = next(model for model in apps.get_models() if model._meta.db_table == EVENTS)
    checkpoint = execute(f"SELECT snapshot FROM {CHECKPOINT} WHERE event_table = %s AND lane = 0", [EVENTS])
    done = checkpoint[0][0] if checkpoint else "1:1:"  # never folded: every event is unfolded
    target = scalar("SELECT pg_current_snapshot()::text")
    unfolded = scalar(
        f"SELECT count(*) FROM {EVENTS} AS e WHERE NOT pg_visible_in_snapshot(e.pgh_xid::text::xid8, %s)",
        [done],
    )
    position = scalar(f"SELECT max(pgh_id) - %s FROM {EVENTS}", [unfolded // 2])
    window = {
        "done": done,
        "target": target,
        "position": position,
        "window_end": position + batch_size,
        "floor": 0,
        "limit": batch_size,
        **lanes.params(0, 1),
    }
    sql, params = batch.sql(model, connection, [EVENTS], batch.IN_BATCH, window, None)
    with transaction.atomic():
        plan = scalar("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
        transaction.set_rollback(True)
    try:
        return _fold_breakdown(plan[0] if isinstance(plan, list) else json.loads(plan)[0])
    except (KeyError, StopIteration, IndexError) as exc:  # the plan's shape changed: no breakdown
        log(f"EXPLAIN breakdown of the fold skipped: {type(exc).__name__}: {exc}")
        return None


def _fold_breakdown(explained: dict) -> dict:
    """Milliseconds per step of one fold batch, from inclusive node times."""
    nodes = list(_plan_nodes(explained["Plan"]))
    insert = next(n for n in nodes if n["Node Type"] == "ModifyTable")
    window = next(n for n in nodes if n["Node Type"] == "WindowAgg")
    read = next(n for n in _plan_nodes(window) if n["Node Type"] == "Limit")
    with_diff = next(n for n in nodes if n.get("Alias") == "w")
    insert_input = insert["Plans"][0]
    steps = {
        "read events (scan, filter, limit)": _inclusive_ms(read),
        "sort by object, lag(), previous Change lookup": _inclusive_ms(window) - _inclusive_ms(read),
        "jsonb snapshot and diff": _inclusive_ms(with_diff) - _inclusive_ms(window),
        "sort by pgh_id": _inclusive_ms(insert_input) - _inclusive_ms(with_diff),
        "insert Change rows (heap, 6 indexes, unique key)": _inclusive_ms(insert)
        - _inclusive_ms(insert_input),
    }
    return {
        "rows": insert["Actual Rows"],
        "execution_ms": explained["Execution Time"],
        "planning_ms": explained["Planning Time"],
        "scan": _scan_of(read),
        "steps_ms": steps,
    }


def _scan_of(node: dict) -> str:
    """The scan under ``node`` that reads the events (below any sort; not an InitPlan or a SubPlan)."""
    nodes = [n for n in _plan_nodes(node) if n.get("Parent Relationship") != "InitPlan"]
    scans = [n for n in nodes if "Relation Name" in n]
    return f"{scans[0]['Node Type']} on {scans[0]['Relation Name']}" if scans else "?"


def fold_in_process(args: argparse.Namespace) -> dict:
    """Fold a backlog of inserts at each batch size, then one of updates (diffs against folded changes)."""
    reset_tables()
    log(f"fold: inserting a backlog of {args.backlog:,} events")
    create_backlog(args.backlog)
    execute(f"VACUUM ANALYZE {EVENTS}")
    explain_inserts = explain_fold_batch(5_000)
    runs = []
    for batch_size in args.batch_sizes:
        forget_folds()
        run = {"backlog": "inserts", "batch_size": batch_size, **time_fold(batch_size, args.quiet)}
        log(f"fold: batch {batch_size:,}: {run['events_per_s']:,.0f} events/s")
        runs.append(run)
    log(f"fold: updating every row (+{args.backlog:,} events)")
    update_backlog(args.backlog)
    execute(f"VACUUM ANALYZE {EVENTS}")
    execute(f"VACUUM ANALYZE {CHANGE}")
    explain_updates = explain_fold_batch(5_000)
    execute("CHECKPOINT")
    run = {"backlog": "updates", "batch_size": 5_000, **time_fold(5_000, args.quiet)}
    log(f"fold: updates, batch 5,000: {run['events_per_s']:,.0f} events/s")
    runs.append(run)
    return {"runs": runs, "explain": {"inserts": explain_inserts, "updates": explain_updates}}


def burst(rows: int, per_transaction: int = 1_000) -> tuple[float, float]:
    """Insert ``rows`` tracked rows as fast as possible; return (first, last) commit time on the DB clock."""
    from benchmarks.streamapp.models import TrackedRow

    first = None
    for start in range(0, rows, per_transaction):
        n = min(per_transaction, rows - start)
        TrackedRow.objects.bulk_create(_new_row(TrackedRow, 0, start + i) for i in range(n))
        if first is None:
            first = scalar("SELECT extract(epoch FROM clock_timestamp())::float8")
    return first, scalar("SELECT extract(epoch FROM clock_timestamp())::float8")


def fold_through_celery(args: argparse.Namespace, concurrency: int, log_dir: Path) -> dict:
    """A burst of ``args.burst`` events, folded by a worker (``-c concurrency``) the listener wakes."""
    reset_tables()
    flush_redis(args.redis_url)
    args.quiet.wait()
    with (
        Stack(f"burst c{concurrency}", {}, log_dir, args.redis_url, concurrency) as stack,
        NotifyCounter() as notes,
        VisibilityProbe(0.01) as probe,
        CpuAccount(stack) as account,
    ):
        first, last = burst(args.burst)
        wait_until_folded(timeout=300)
        time.sleep(0.05)  # one more probe sample
        tasks = _wait_for_fold_tasks(stack, args.burst)
    verify_exactly_once(args.burst)
    final_id = scalar(f"SELECT max(id) FROM {CHANGE}")
    seen = probe.seen_at(final_id)
    seconds = seen - first
    result = {
        "concurrency": concurrency,
        "events": args.burst,
        "write_seconds": last - first,
        "seconds": seconds,
        "events_per_s": args.burst / seconds,
        "last_folded_at_after_first_commit": scalar(
            f"SELECT extract(epoch FROM max(folded_at))::float8 FROM {CHANGE}"
        )
        - first,
        "notifications": len(notes.times),
        "fold_tasks": tasks,
        "other_load": account.result()["other_load"],
    }
    log(f"celery -c {concurrency}: {args.burst:,} events in {seconds:.2f}s = {result['events_per_s']:,.0f}/s")
    return result


def _wait_for_fold_tasks(stack: Stack, events: int, timeout: float = 10.0) -> int:
    """The fold tasks the worker logged, once their events add up (the log line follows the commit)."""
    deadline = time.monotonic() + timeout
    while True:
        tasks, folded = stack.fold_tasks()
        if folded >= events or time.monotonic() > deadline:
            return tasks
        time.sleep(0.05)


# --------------------------------------------------------------------------- 2. latency


def writers_for(rate: int) -> int:
    """Writer processes for a rate: one per 250 tx/s, at least 2."""
    return max(2, math.ceil(rate / 250))


def run_paced_writers(pool, rate: int, seconds: float) -> tuple[list[tuple[int, float, float]], float, float]:
    """Run the paced writers together; (commits, achieved tx/s, max lateness in s)."""
    n = writers_for(rate)
    start_at = time.time() + 1.0
    jobs = [(rate / n, seconds, start_at, w / n, w) for w in range(n)]
    results = pool.starmap(paced_writes, jobs, chunksize=1)
    commits = [c for r in results for c in r["commits"]]
    elapsed = max(r["elapsed"] for r in results)
    return commits, len(commits) / elapsed, max(r["max_late"] for r in results)


def change_times() -> dict[int, tuple[int, float]]:
    """Per tracked row: (Change id, folded_at) of its insert's Change."""
    rows = execute(
        f"SELECT object_id::bigint, id, extract(epoch FROM folded_at)::float8 FROM {CHANGE}"
        " WHERE event_table = %s AND label = 'snapshot'",
        [EVENTS],
    )
    return {obj: (change_id, folded) for obj, change_id, folded in rows}


def fold_batches() -> int:
    """Fold transactions that wrote Change rows (each has one ``folded_at``: its ``now()``)."""
    return scalar(f"SELECT count(DISTINCT folded_at) FROM {CHANGE}")


def latencies(commits: list[tuple[int, float, float]], probe: VisibilityProbe) -> dict:
    """Per commit: seconds until its Change row was seen, until its ``folded_at``, and the client's lag."""
    changes = change_times()
    return {
        "seen": [probe.seen_at(changes[pk][0]) - committed for pk, committed, _ in commits],
        "folded_at": [changes[pk][1] - committed for pk, committed, _ in commits],
        "client_after_commit": [after - committed for _, committed, after in commits],
    }


def latency_target_ms(settings: dict) -> float:
    """p99 target: 250 ms with NOTIFY, the poll interval + 100 ms without."""
    if settings.get("NOTIFY", True):
        return NOTIFY_P99_TARGET_MS
    return settings.get("POLL_INTERVAL", 1.0) * 1000 + POLL_SLACK_MS


def latency_run(args, pool, mode: str, settings: dict, rate: int, log_dir: Path) -> dict:
    """Steady single-row writes at ``rate`` tx/s; latency from each commit to its Change row."""
    reset_tables()
    flush_redis(args.redis_url)
    args.quiet.wait()
    with (
        Stack(f"latency {mode} {rate}", settings, log_dir, args.redis_url) as stack,
        NotifyCounter() as notes,
        VisibilityProbe(0.01) as probe,
    ):
        with CpuAccount(stack, pool) as account:
            commits, achieved, max_late = run_paced_writers(pool, rate, args.latency_seconds)
            drain = wait_until_folded(timeout=60)
        time.sleep(0.05)  # one more probe sample
        tasks = stack.fold_tasks()[0]
    verify_exactly_once(len(commits))
    result = {
        "mode": mode,
        "settings": settings,
        "rate": rate,
        "writers": writers_for(rate),
        "achieved": achieved,
        "max_late_ms": max_late * 1000,
        "transactions": len(commits),
        **{name: summarize_ms(values) for name, values in latencies(commits, probe).items()},
        "target_p99_ms": latency_target_ms(settings),
        "notifications": len(notes.times),
        "fold_batches": fold_batches(),
        "fold_tasks_finished": tasks,
        **account.result(),
        "drain_seconds": drain,
    }
    log(
        f"latency {mode} @ {rate}/s: achieved {achieved:,.0f}/s, seen p50 {result['seen']['p50']:.0f} ms,"
        f" p99 {result['seen']['p99']:.0f} ms (folded_at p99 {result['folded_at']['p99']:.0f} ms)"
    )
    return result


def task_durations(worker_log: str) -> list[float]:
    """Seconds each finished fold task took, from the worker's log."""
    return [float(d) for d in re.findall(r"audit_stream\.fold\[[^]]*\] succeeded in ([0-9.]+)s", worker_log)]


def steady_run(args, pool, log_dir: Path, rate: int = 1_000, max_seconds: float = 30.0) -> dict | None:
    """NOTIFYs per second before and after the fold task's ``max_seconds`` under steady writes.

    ``fold()`` is called with its default ``max_seconds`` (30 s) by the task; a
    run longer than that shows whether the task returns then and how the
    wake-up behaves past it.
    """
    if not args.steady_seconds:
        return None
    reset_tables()
    flush_redis(args.redis_url)
    args.quiet.wait()
    with Stack(f"steady {rate}", {}, log_dir, args.redis_url) as stack, NotifyCounter() as notes:
        commits, achieved, _ = run_paced_writers(pool, rate, args.steady_seconds)
        wait_until_folded(timeout=60)
        time.sleep(0.5)
        durations = task_durations(stack.procs[0].output())
    verify_exactly_once(len(commits))
    first = min(c[2] for c in commits)  # client clock: comparable with the notification times
    last = max(c[2] for c in commits)
    result = {
        "rate": rate,
        "achieved": achieved,
        "seconds": last - first,
        "max_seconds": max_seconds,
        "notify_per_s_before": notes.between(first, first + max_seconds) / max_seconds,
        "notify_per_s_after": notes.between(first + max_seconds, last)
        / max(last - first - max_seconds, 1e-9),
        "fold_tasks_finished": len(durations),
        "longest_task_seconds": max(durations, default=0.0),
    }
    log(
        f"steady {rate}/s for {result['seconds']:.0f}s: NOTIFY {result['notify_per_s_before']:.1f}/s before"
        f" {max_seconds:.0f}s, {result['notify_per_s_after']:.1f}/s after; longest fold task"
        f" {result['longest_task_seconds']:.1f}s"
    )
    return result


# --------------------------------------------------------------------------- 3. concurrent writers


def write_run(args, pool, variant: tuple[str, str, dict | None], rep: int, log_dir: Path) -> dict:
    """8 writers for a fixed time on one variant, with the stream processes running (unless None)."""
    name, table, settings = variant
    reset_tables()
    flush_redis(args.redis_url)
    stack = Stack(f"writers {name} {rep}", settings or {}, log_dir, args.redis_url)
    with stack if settings is not None else contextlib.nullcontext(stack), NotifyCounter() as notes:
        if settings is None:
            from audit_stream.stream import wakeup

            wakeup.disarm()  # no worker: nobody would re-arm it, nobody listens
        with CpuAccount(stack, pool) as account:
            start_at = time.time() + 1.0
            jobs = [(table, args.write_seconds, start_at, w) for w in range(args.writers)]
            rows = sum(pool.starmap(timed_writes, jobs, chunksize=1))
            end = start_at + args.write_seconds
            events, changes = counts()
            drain = wait_until_folded(timeout=120) if settings is not None else None
        tasks = _wait_for_fold_tasks(stack, events) if settings is not None else None
    batches = fold_batches() if settings is not None else None
    if settings is None:
        fold_all_in_process()
    verify_exactly_once(rows if table == TRACKED else 0)
    result = {
        "variant": name,
        "rep": rep,
        "rows": rows,
        "tx_per_s": rows / args.write_seconds,
        "notifications": notes.between(start_at, end + 0.5),
        "fold_batches": batches,
        "fold_tasks_finished": tasks,
        **account.result(),
        "backlog_at_end": events - changes,
        "drain_seconds": drain,
    }
    log(f"writers {name} (rep {rep + 1}): {result['tx_per_s']:,.0f} tx/s, {result['notifications']} NOTIFYs")
    return result


def fold_all_in_process() -> None:
    """Fold everything in this process (for the run without stream processes)."""
    from audit_stream.stream.fold import fold

    while not fold(EVENTS, max_seconds=3600).caught_up:
        pass


def concurrent_writes(args, pool, log_dir: Path) -> list[dict]:
    """Every variant, ``args.write_repeat`` times, the order rotating each repetition.

    Each run waits for a quiet machine first (within ``args.quiet``'s budget).
    A run during which other programs used more than ``MAX_OTHER_LOAD`` of the
    machine is marked disturbed and run again, at most ``args.write_retries``
    times in all; the summary leaves disturbed runs out.
    """
    runs = []
    retries = args.write_retries
    for rep in range(args.write_repeat):
        shift = rep % len(WRITE_VARIANTS)
        for variant in WRITE_VARIANTS[shift:] + WRITE_VARIANTS[:shift]:
            while True:
                args.quiet.wait()
                run = write_run(args, pool, variant, rep, log_dir)
                run["disturbed"] = run["other_load"] > MAX_OTHER_LOAD
                runs.append(run)
                if not run["disturbed"] or retries == 0:
                    break
                retries -= 1
                log(f"  other programs used {run['other_load']:.0%} of the machine: run again")
    return runs


def _median(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.median(values) if values else None


def write_summary(runs: list[dict]) -> list[dict]:
    """Per variant: median tx/s and its ratio to untracked, and the medians of the other columns.

    Over the undisturbed runs of the variant, or all of them if every one was disturbed.
    """
    summary = []
    for name, _, _ in WRITE_VARIANTS:
        mine = [r for r in runs if r["variant"] == name]
        mine = [r for r in mine if not r.get("disturbed")] or mine
        row = {"variant": name, "runs": len(mine), "all_tx_per_s": [round(r["tx_per_s"]) for r in mine]}
        for key in ("tx_per_s", "notifications", "fold_batches", "fold_tasks_finished", "stream_cpu_seconds",
                    "backend_cpu_seconds", "other_load", "backlog_at_end", "drain_seconds"):  # fmt: skip
            row[key] = _median(mine, key)
        summary.append(row)
    base = summary[0]["tx_per_s"]
    for row in summary:
        row["x_untracked"] = base / row["tx_per_s"]
    return summary


# --------------------------------------------------------------------------- report


def _n(value, spec: str = ",.0f") -> str:
    return "—" if value is None else format(value, spec)


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def fold_table(results: dict) -> str:
    """Markdown: events/s per backlog and path."""
    lines = [
        "| backlog | path | batch size | events | seconds | events/s | ms per batch | other load"
        " | target ≥ 10,000/s |",
        "|---|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in results["in_process"]["runs"]:
        lines.append(
            f"| {r['events']:,} {r['backlog']} | `fold()` in-process | {r['batch_size']:,} | {r['events']:,}"
            f" | {r['seconds']:.2f} | {r['events_per_s']:,.0f} | {r['ms_per_batch']:.0f}"
            f" | {r['other_load']:.0%}"
            f" | {_met(r['events_per_s'] >= FOLD_TARGET)} |"
        )
    for r in results["celery"]:
        lines.append(
            f"| {r['events']:,}-event burst | worker `-c {r['concurrency']}` + listener | 5,000 (default)"
            f" | {r['events']:,} | {r['seconds']:.2f} | {r['events_per_s']:,.0f} | — | {r['other_load']:.0%}"
            f" | {_met(r['events_per_s'] >= FOLD_TARGET)} |"
        )
    return "\n".join(lines)


def celery_notes(results: dict) -> str:
    """Markdown bullet per Celery burst run."""
    return "\n".join(
        f"- `-c {r['concurrency']}`: the burst's writes took {r['write_seconds']:.2f} s; last Change visible"
        f" {r['seconds']:.2f} s after the first commit"
        f" (its `folded_at` at {r['last_folded_at_after_first_commit']:.2f} s);"
        f" NOTIFYs: {r['notifications']}, fold tasks: {r['fold_tasks']}."
        for r in results["celery"]
    )


def _ms_and_share(ms: float, total: float) -> str:
    return f"{ms:.1f} ({ms / total:.0%})"


def explain_table(results: dict) -> str:
    """Markdown: where one 5,000-event fold batch spends its SQL time."""
    explains = {k: v for k, v in results["in_process"]["explain"].items() if v}
    if not explains:
        return "_EXPLAIN breakdown unavailable._"
    kinds = list(explains)
    lines = ["| step | " + " | ".join(f"{k} ms" for k in kinds) + " |", "|---|" + "--:|" * len(kinds)]
    for step in next(iter(explains.values()))["steps_ms"]:
        cells = [_ms_and_share(explains[k]["steps_ms"][step], explains[k]["execution_ms"]) for k in kinds]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines.append(
        "| **execution time** | " + " | ".join(f"**{explains[k]['execution_ms']:.1f}**" for k in kinds) + " |"
    )
    return "\n".join(lines)


def latency_table(results: list[dict]) -> str:
    """Markdown: latency percentiles per mode and rate."""
    lines = [
        "| mode | rate tx/s | achieved tx/s | tx | p50 ms | p95 ms | p99 ms | max ms"
        " | `folded_at` p50 / p99 ms | fold batches | fold tasks done | NOTIFYs | stream CPU s, processes"
        " + backends | other load | target p99 |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in results:
        seen, folded = r["seen"], r["folded_at"]
        lines.append(
            f"| {r['mode']} | {r['rate']:,} | {r['achieved']:,.0f} | {r['transactions']:,}"
            f" | {seen['p50']:.0f} | {seen['p95']:.0f} | {seen['p99']:.0f} | {seen['max']:.0f}"
            f" | {folded['p50']:.0f} / {folded['p99']:.0f}"
            f" | {r['fold_batches']:,} | {r['fold_tasks_finished']:,} | {r['notifications']:,}"
            f" | {r['stream_cpu_seconds']:.1f} + {r['backend_cpu_seconds']:.1f} | {r['other_load']:.0%}"
            f" | < {r['target_p99_ms']:.0f} ms: {_met(seen['p99'] < r['target_p99_ms'])} |"
        )
    return "\n".join(lines)


def steady_table(steady: dict | None) -> str:
    """Markdown: the long steady run."""
    if not steady:
        return "_Not run (`--quick`)._"
    return "\n".join(
        [
            "| rate tx/s | achieved | seconds | NOTIFY/s before 30 s | NOTIFY/s after 30 s | fold tasks done"
            " | longest fold task s |",
            "|--:|--:|--:|--:|--:|--:|--:|",
            f"| {steady['rate']:,} | {steady['achieved']:,.0f} | {steady['seconds']:.0f}"
            f" | {steady['notify_per_s_before']:.1f} | {steady['notify_per_s_after']:.1f}"
            f" | {steady['fold_tasks_finished']} | {steady['longest_task_seconds']:.1f} |",
        ]
    )


def _cpu_pair(row: dict) -> str:
    if row["stream_cpu_seconds"] is None:
        return "—"
    return f"{row['stream_cpu_seconds']:.1f} + {_n(row['backend_cpu_seconds'], '.1f')}"


def writers_table(summary: list[dict], seconds: float) -> str:
    """Markdown: 8-writer throughput per variant."""
    lines = [
        f"| variant | tx/s, median (runs) | x untracked | NOTIFYs in {seconds:.0f} s | fold batches"
        " | fold tasks done | stream CPU s, processes + backends | backlog at end | drain s | other load |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in summary:
        runs = ", ".join(f"{v:,}" for v in r["all_tx_per_s"])
        lines.append(
            f"| {r['variant']} | {r['tx_per_s']:,.0f} ({runs}) | {r['x_untracked']:.2f}"
            f" | {_n(r['notifications'])} | {_n(r['fold_batches'])} | {_n(r['fold_tasks_finished'])}"
            f" | {_cpu_pair(r)}"
            f" | {_n(r['backlog_at_end'])} | {_n(r['drain_seconds'], '.2f')} | {r['other_load']:.0%} |"
        )
    return "\n".join(lines)


def reading(results: dict) -> str:
    """One paragraph that reads the numbers (generated from them, so it stays true on a rerun)."""
    args = results["args"]
    parts = [
        _fold_reading(results["in_process"]),
        _celery_reading(results["celery"]),
        _latency_reading(results["latency"]),
        _steady_reading(results.get("steady")),
        _writers_reading(results["writers"], args["write_seconds"], args["writers"]),
    ]
    return " ".join(part for part in parts if part)


def _fold_reading(in_process: dict) -> str:
    runs = in_process["runs"]
    inserts = [r for r in runs if r["backlog"] == "inserts"]
    best = max(inserts, key=lambda r: r["events_per_s"])
    worst = min(inserts, key=lambda r: r["events_per_s"])
    updates = next((r for r in runs if r["backlog"] == "updates"), None)
    text = _prose(
        f"""**Fold.** In-process the fold does {worst["events_per_s"]:,.0f} to {best["events_per_s"]:,.0f}
        events/s across batch sizes on inserts
        {f"and {updates['events_per_s']:,.0f} on updates" if updates else ""}
        ({_met(min(r["events_per_s"] for r in runs) >= FOLD_TARGET)}: target 10,000/s)."""
    )
    if (best["events_per_s"] - worst["events_per_s"]) / best["events_per_s"] < 0.15:
        text += " The batch size barely matters from 1,000 events up."
    else:
        text += f" Batches of {best['batch_size']:,} did best, {worst['batch_size']:,} worst."
    explain = in_process["explain"].get("inserts")
    if explain:
        steps = sorted(explain["steps_ms"].items(), key=lambda kv: -kv[1])
        top = "; ".join(f"{name} {ms / explain['execution_ms']:.0%}" for name, ms in steps[:3])
        batch = next((r for r in inserts if r["batch_size"] == 5_000), best)
        text += " " + _prose(
            f"""A 5,000-event batch takes {batch["ms_per_batch"]:.0f} ms end to end, and the fold's one
            `INSERT ... SELECT` is most of it (EXPLAIN ANALYZE, instrumentation included:
            {explain["execution_ms"]:.0f} ms), its time going to {top}. Reading the events
            ({explain["scan"]}) is not the limit: building the JSONB and writing the `Change` rows are."""
        )
    return text


def _celery_reading(celery: list[dict]) -> str:
    if not celery:
        return ""
    return (
        "Through Celery a burst is folded at "
        + " and ".join(f"{r['events_per_s']:,.0f} events/s with `-c {r['concurrency']}`" for r in celery)
        + " (first commit to last `Change` visible, writing included): a second worker process cannot help"
        " one table, whose folds the checkpoint row lock serialises."
    )


def _latency_reading(latency: list[dict]) -> str:
    on = [r for r in latency if r["settings"].get("NOTIFY", True)]
    off = [r for r in latency if not r["settings"].get("NOTIFY", True)]
    text = (
        "**Latency.** With NOTIFY, "
        + ", ".join(
            f"p50 {r['seen']['p50']:.0f} ms / p99 {r['seen']['p99']:.0f} ms at {r['rate']:,} tx/s" for r in on
        )
        + f" ({_met(all(r['seen']['p99'] < r['target_p99_ms'] for r in on))}: target 250 ms). Poll-only, p99 "
        + ", ".join(
            f"{r['seen']['p99']:.0f} ms ({r['mode'].split(', ')[1]}, {r['rate']:,} tx/s)" for r in off
        )
        + f" ({_met(all(r['seen']['p99'] < r['target_p99_ms'] for r in off))}:"
        " target poll interval + 100 ms)."
    )
    long_tasks = [r for r in latency if r["fold_tasks_finished"] * 5 < r["fold_batches"]]
    if long_tasks:
        text += " " + _prose(
            f"""In {len(long_tasks)} of {len(latency)} runs the worker ran more than 5 fold batches per fold
            task: under steady writes one task keeps folding small batches back to back (it returns only
            when it finds no new work, within `FOLD_LINGER` if set), so the typical latency is that loop's
            period, not the wake-up path or the poll interval. The tail is the moments the loop does go idle:
            the next change then waits for a NOTIFY, or in poll-only mode for the next poll, which is why
            poll-only p99 sits near the poll interval while its p50 can be a few ms."""
        )
    lagging = [r for r in latency if r["achieved"] < 0.95 * r["rate"]]
    if lagging:
        text += (
            " The writers did not keep up in: "
            + ", ".join(f"{r['mode']} at {r['rate']:,} tx/s ({r['achieved']:,.0f} achieved)" for r in lagging)
            + "."
        )
    client = max(r["client_after_commit"]["p99"] for r in latency)
    text += (
        " A client-side timestamp taken after the commit returns lags the commit by up to"
        f" {client:.0f} ms (p99)"
        " on this 2-core machine, which is why the commit time is taken inside the statement."
    )
    return text


def _steady_reading(steady: dict | None) -> str:
    if not steady:
        return ""
    text = (
        f"Under steady writes NOTIFY stays rare ({steady['notify_per_s_before']:.1f}/s) for the fold task's"
        f" first {steady['max_seconds']:.0f} s, then {steady['notify_per_s_after']:.1f}/s"
    )
    if steady["longest_task_seconds"] > steady["max_seconds"] + 5:
        text += (
            f"; one fold task ran {steady['longest_task_seconds']:.0f} s, past its `max_seconds`: once the"
            " deadline has passed, `fold()` no longer lingers but arms the wake-up flag after every batch,"
            " and as long as `has_work()` finds new events it folds on instead of returning"
        )
    return text + "."


def _writers_reading(summary: list[dict], seconds: float, writers: int) -> str:
    by = {r["variant"]: r for r in summary}
    plain, bare = by["untracked"], by["tracked, no stream processes"]
    on, off = by["tracked, NOTIFY on"], by["tracked, NOTIFY off"]
    text = _prose(
        f"""**{writers} writers.** Untracked {plain["tx_per_s"]:,.0f} tx/s; tracked with no stream process
        {bare["tx_per_s"]:,.0f} ({bare["x_untracked"]:.2f}x); with the listener and the worker running,
        {on["tx_per_s"]:,.0f} with NOTIFY ({on["x_untracked"]:.2f}x) and {off["tx_per_s"]:,.0f} without
        ({off["x_untracked"]:.2f}x), so NOTIFY on vs off is {off["tx_per_s"] / on["tx_per_s"]:.2f}x."""
    )
    batches, notes = on["fold_batches"] or 0, on["notifications"] or 0
    if batches and notes >= batches / 2:
        text += " " + _prose(
            f"""NOTIFY was not sent per transaction but once per fold batch ({notes:,.0f} NOTIFYs,
            {batches:,.0f} batches in {seconds:.0f} s): the worker re-armed the flag after every batch, the
            next writer notified, and each notification woke the listener for a whole poll."""
        )
    else:
        text += " " + _prose(
            f"""Only {notes:,.0f} NOTIFY{" was" if notes == 1 else "s were"} sent in {seconds:.0f} s for
            {batches:,.0f} fold batches: while writes keep coming the fold keeps folding without re-arming the
            flag, so the commit-time NOTIFY lock is off the write path."""
        )
    text += " " + _prose(
        f"""The stream used {_cpu_pair(on)} s of CPU (processes + backends) with NOTIFY and
        {_cpu_pair(off)} s without, on a 2-core machine where the writers are CPU-bound: that, not NOTIFY,
        is what running the stream costs the writers here."""
    )
    disturbed = [r["variant"] for r in summary if r["other_load"] and r["other_load"] > MAX_OTHER_LOAD]
    if disturbed:
        text += " " + _prose(
            f"""Caution: other programs used more than {MAX_OTHER_LOAD:.0%} of the machine during the runs
            of {", ".join(disturbed)} (see "other load"), so these numbers are noisy."""
        )
    return text


def _prose(text: str) -> str:
    """One paragraph from a wrapped triple-quoted string."""
    return " ".join(text.split())


def _machine_paragraph(results: dict) -> str:
    m = results["machine"]
    return _prose(
        f"""Machine: {m["nproc"]} cores, shared by every process (PostgreSQL, Redis, the stream processes
        and the writers); PostgreSQL {m["postgresql"]} (shared_buffers {m["shared_buffers"]},
        synchronous_commit {m["synchronous_commit"]}); Python {m["python"]}, Django {m["django"]},
        Celery {m["celery"]}; audit_stream at `{m["git"]}`."""
    )


METHOD = _prose(
    """Method: one tracked table (`@audit_stream.track()`: Snapshot + BeforeDelete; columns name, price,
    stock, note) and an untracked twin, in a dedicated database (`audit_stream_bench_stream`, recreated and
    migrated at start). Before every run the tables, the event table, `audit_stream_change` and the
    checkpoint are truncated, vacuumed and checkpointed, and Redis DB 14 is flushed. The stream processes
    are the real ones (`celery -A worker worker -l info -c N` and `python -m worker.listen`), started for
    each run with its `AUDIT_STREAM` settings and stopped after it. Every run checks that each event became
    exactly one `Change` row (counts and distinct `event_id`s match, no event without a change). This
    machine is shared with other sessions: before each timed run the benchmark waits (within a budget for the
    whole run) until other programs use less than 10% of its CPU, and every table's "other load" column is
    the share of the machine's CPU other programs used during the run (its busy time from /proc/stat, less
    this benchmark's processes and its database's backends)."""
)


def _fold_method(a: dict) -> str:
    return _prose(
        f"""Backlog: {a["backlog"]:,} rows inserted with `bulk_create`, 5,000 per transaction. The
        in-process rows fold it with `audit_stream.stream.fold.fold(table, batch_size=N)` until caught up,
        from no checkpoint each time (with `FOLD_LINGER` 0, so the time is folding, not waiting for more);
        the updates row then updates every row (5,000 per transaction) and folds those events, whose
        diffs are against the changes already folded. The Celery rows write a
        burst of {a["burst"]:,} rows (1,000 per transaction, as fast as one process can) while the worker
        and the listener run idle; the time is from the first commit to the moment the last `Change` row is
        visible (sampled every 10 ms), so it includes the writing."""
    )


EXPLAIN_METHOD = _prose(
    """Where a 5,000-event batch from the middle of the backlog spends its SQL time: `EXPLAIN (ANALYZE)` of
    the fold's `INSERT ... SELECT` from `audit_stream/stream/batch.py` (rolled back), each step's time being
    the difference of inclusive node times."""
)


def _latency_method(a: dict) -> str:
    return _prose(
        f"""{a["latency_seconds"]:.0f} s of single-row insert transactions at a fixed rate, per mode (2
        writer processes for 200 tx/s, 4 for 1,000, each on a monotonic schedule), with one listener and one
        worker (`-c 1`). Each transaction is an autocommit `INSERT ... RETURNING id, clock_timestamp()`: the
        commit follows in the same server call, so that is the commit time on the database clock (early by
        the trigger and the WAL flush, well under a millisecond). Latency (p50 to max) is from it to the
        first 10 ms sample of `max(audit_stream_change.id)` showing the row's `Change` (a slight
        overestimate, up to 10 ms). `folded_at` minus the commit time is shown too: `folded_at` is `now()` of
        the fold transaction, i.e. its start, so it underestimates. Targets are judged on the overestimate:
        p99 < 250 ms with NOTIFY, < poll interval + 100 ms without. Stream CPU and other load as in the
        next table."""
    )


STEADY_METHOD = _prose(
    """Past the fold's `max_seconds`: NOTIFY on, 1,000 tx/s for 45 s (as above, one worker), counting the
    NOTIFYs a separate session receives before and after the 30 s that the fold task gives `fold()`
    (`max_seconds`), and how long the longest fold task ran (from the worker's log)."""
)


def _writers_method(a: dict) -> str:
    return _prose(
        f"""{a["writers"]} writer processes, each inserting one row per transaction (autocommit `save()`)
        for {a["write_seconds"]:.0f} s; median of {a["write_repeat"]} runs per variant, the order rotating.
        The listener and one worker (`-c 1`) run in every variant but the one without stream processes (whose
        events are folded after the run); for untracked they have nothing to do. NOTIFYs are counted by a
        separate session LISTENing on the channel; fold batches are the fold transactions that wrote `Change`
        rows; stream CPU is the worker's and the listener's processes, then their PostgreSQL backends;
        backlog is the events not yet folded when the writers stopped, drain the time to fold them. A run
        with other load above {MAX_OTHER_LOAD:.0%} is run again (at most {a["write_retries"]} times in all)
        and left out of the medians."""
    )


def markdown(results: dict) -> str:
    """The whole BENCHMARKS.md section."""
    a = results["args"]
    blocks = [
        SECTION,
        f"Measured {results['date']} with `{COMMAND}` ({results['total_seconds'] / 60:.1f} min).",
        _machine_paragraph(results),
        METHOD,
        "### Fold throughput",
        _fold_method(a),
        fold_table(results),
        celery_notes(results),
        EXPLAIN_METHOD,
        explain_table(results),
        "### Commit-to-Change latency",
        _latency_method(a),
        latency_table(results["latency"]),
        STEADY_METHOD,
        steady_table(results.get("steady")),
        f"### {a['writers']} concurrent writers",
        _writers_method(a),
        writers_table(results["writers"], a["write_seconds"]),
        "### Reading",
        reading(results),
    ]
    return "\n\n".join(blocks) + "\n"


def print_tables(results: dict) -> None:
    """The tables, on stdout."""
    print("\nFold throughput\n\n" + fold_table(results) + "\n\n" + celery_notes(results))
    print("\nOne 5,000-event fold batch\n\n" + explain_table(results))
    print("\nCommit-to-Change latency\n\n" + latency_table(results["latency"]))
    print("\nPast the fold's max_seconds\n\n" + steady_table(results.get("steady")))
    print(
        f"\n{results['args']['writers']} concurrent writers\n\n"
        + writers_table(results["writers"], results["args"]["write_seconds"])
    )
    print("\n" + reading(results))


def save(results: dict, quick: bool) -> None:
    """JSON into benchmarks/results/, and (full runs only) the section into BENCHMARKS.md."""
    suffix = "-quick" if quick else ""
    path = ROOT / "benchmarks" / "results" / f"stream-{results['date'][:10]}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"wrote {path.relative_to(ROOT)}")
    if not quick:
        replace_section(SECTION, markdown(results))
        log("updated BENCHMARKS.md")


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace, log_dir: Path) -> dict:
    """All three measurements; the writer pool and every child process are gone when it returns."""
    args.quiet = QuietWaiter(args.quiet_budget)
    results: dict = {"in_process": fold_in_process(args)}
    results["celery"] = [fold_through_celery(args, c, log_dir) for c in (1, 2)]
    pool = writer_pool(args.writers)
    try:
        results["latency"] = [
            latency_run(args, pool, mode, settings, rate, log_dir)
            for mode, settings in LATENCY_MODES
            for rate in args.latency_rates
        ]
        results["steady"] = steady_run(args, pool, log_dir)
        runs = concurrent_writes(args, pool, log_dir)
    finally:
        pool.terminate()
        pool.join()
    results["writer_runs"] = runs
    results["writers"] = write_summary(runs)
    results["waited_for_quiet_seconds"] = args.quiet.waited
    return results


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the tables, write the JSON and the BENCHMARKS.md section."""
    if "--burst" in (
        sys.argv[1:] if argv is None else argv
    ):  # a measurement of its own (benchmarks/burst.py)
        from benchmarks import burst

        burst.main(argv)
        return
    args = parse_args(argv)
    if args.render:
        results = json.loads(Path(args.render).read_text())
        print_tables(results)
        replace_section(SECTION, markdown(results))
        log("updated BENCHMARKS.md")
        return
    configure_environment(args)
    # SIGTERM unwinds like Ctrl-C, through every `finally` that stops a child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import django

    django.setup()
    started = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="audit_stream_bench_stream-"))
    log(f"database {args.database_url}, redis {args.redis_url}; process logs in {log_dir}")
    recreate_database()
    migrate(args.update_migrations)
    flush_redis(args.redis_url)
    if args.lanes:
        _run_lanes(args, started)
        return
    results = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "args": {k: v for k, v in vars(args).items() if k not in ("database_url", "redis_url", "quiet")},
        **run(args, log_dir),
    }
    results["total_seconds"] = time.monotonic() - started
    print_tables(results)
    if not args.no_report:
        save(results, args.quick)
    log(f"done in {results['total_seconds'] / 60:.1f} min")


def _run_lanes(args: argparse.Namespace, started: float) -> None:
    """``--lanes``: the fold lanes measurement alone (benchmarks/lanes.py)."""
    from benchmarks import lanes

    args.quiet = QuietWaiter(args.quiet_budget)
    results = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "command": " ".join(["python -m benchmarks.stream", *sys.argv[1:]]),
        **lanes.measure(args),
    }
    results["total_seconds"] = time.monotonic() - started
    print("\nFold lanes\n\n" + lanes.table(results))
    if not args.no_report:
        lanes.save(results)
    log(f"done in {results['total_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
