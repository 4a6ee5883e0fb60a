"""The fault suite's world: a private PostgreSQL cluster and Redis server, so tests can restart them.

Each test gets a fresh database (cloned from a migrated template), a Celery
worker and a listener pointed at it, a steady writer, and a webhook receiver
that can be told to fail. At the end, :func:`Stack.assert_consistent` counts:
every event folded exactly once, every message delivered at least once and
none dead (unless a test says otherwise), no webhook-id reused for two
different messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest
import redis

from audit_stream.webhooks.models import new_secret
from tests.procs import ROOT, Proc, wait_until

SETTINGS = {
    "WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8"],
    "WEBHOOK_RETRY_SCHEDULE": [0, 0.2, 0.5, 1, 1, 2, 2],
    "WEBHOOK_TIMEOUT": [1, 1],
    "POLL_INTERVAL": 0.5,
    "WEBHOOK_DISABLE_AFTER": 600,
}
FIGURES = ROOT / "artifacts" / "faults.jsonl"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").iterdir(), reverse=True)
    return versions[0] / "bin"


class Cluster:
    """A throwaway PostgreSQL cluster owned by the postgres OS user."""

    def __init__(self, root: Path) -> None:
        self.data = root / "pgdata"
        self.port = _free_port()
        root.mkdir(parents=True, exist_ok=True)
        shutil.chown(root, "postgres")
        self._as_postgres(_pg_bin() / "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")
        (self.data / "postgresql.auto.conf").write_text(
            f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n"
            "fsync = off\nmax_connections = 100\n"
        )
        self.log = root / "postgres.log"
        self.start()

    def _as_postgres(self, *args) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *map(str, args)], check=True, capture_output=True)

    def _ctl(self, *args) -> None:
        self._as_postgres(_pg_bin() / "pg_ctl", "-D", self.data, "-l", self.log, "-w", *args)

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._ctl("stop", "-m", "immediate")

    def url(self, db: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def connect(self, db: str, **kwargs) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=db, **kwargs)


class RedisServer:
    """A private redis-server that forgets everything when restarted."""

    def __init__(self, root: Path) -> None:
        self.port = _free_port()
        self.root = root
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(lambda: _can_connect(self.port), timeout=10, message="redis to start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _can_connect(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Receiver:
    """A threaded webhook receiver on loopback with a mode: ok, down, slow or flaky."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.in_flight = 0  # slow requests being answered now
        self.received: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                mode = receiver.mode
                if mode == "slow":
                    with receiver.lock:
                        receiver.in_flight += 1
                    try:
                        time.sleep(1.5)  # beyond the 1 s read timeout (the receiver's behaviour)
                    finally:
                        with receiver.lock:
                            receiver.in_flight -= 1
                if mode == "flaky" and random.random() < 0.3:
                    self.send_response(500)
                    self.end_headers()
                    return
                with receiver.lock:
                    receiver.received.append((self.headers["webhook-id"], json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.handler = Handler
        self.port = _free_port()
        self.thread: threading.Thread | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def up(self) -> None:
        if self.thread is None:
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
            self.server.daemon_threads = True
            self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
            self.thread.start()

    def down(self) -> None:
        if self.thread is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread = None


class Writer(threading.Thread):
    """Single-row write transactions at a steady rate, reconnecting through outages."""

    def __init__(self, connect, rate: float = 100.0) -> None:
        super().__init__(daemon=True)
        self.connect, self.rate = connect, rate
        self.stopping = threading.Event()
        self.committed = 0
        self.errors = 0

    def run(self) -> None:
        conn = None
        n, started = 0, time.monotonic()
        while not self.stopping.is_set():
            try:
                if conn is None or conn.closed:
                    conn = self.connect(autocommit=True)
                conn.execute(
                    "INSERT INTO testapp_product (name, price, stock, updated_at) VALUES (%s, %s, 0, now())",
                    [f"w-{os.getpid()}-{n}-{random.random()}", n % 100],
                )
                self.committed += 1
            except psycopg.Error:
                self.errors += 1
                conn = None
                time.sleep(0.2)
            n += 1
            time.sleep(max(0.0, started + n / self.rate - time.monotonic()))
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)


class Stack:
    """One test's database, processes, receiver and writer."""

    def __init__(
        self, cluster: Cluster, redis: RedisServer, db: str, log_dir: Path, name: str, lanes: int = 1
    ) -> None:
        self.cluster, self.redis, self.db, self.log_dir, self.name = cluster, redis, db, log_dir, name
        self.lanes = lanes  # the products' event table is folded in this many lanes
        self.procs: list[Proc] = []
        self.writers: list[Writer] = []  # stopped on close, so a failed test leaves none writing
        self.receiver: Receiver | None = None
        self.endpoint_id: int | None = None
        self.figures: dict = {"scenario": name, "lanes": lanes}

    def env(self) -> dict:
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": self.cluster.url(self.db),
            "REDIS_URL": self.redis.url,
            "AUDIT_STREAM_SETTINGS": json.dumps(
                {**SETTINGS, "FOLD_LANES": {"testapp.ProductEvent": self.lanes}}
            ),
            "PYTHONUNBUFFERED": "1",
        }

    def sql(self, statement: str, params=None):
        with self.cluster.connect(self.db, autocommit=True) as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else None

    def worker(self, name: str = "worker", concurrency: int = 2) -> Proc:
        label = f"{name}-{len(self.procs)}"
        args = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-l", "info",
                "-c", str(concurrency), "-n", f"{label}@%h",
                "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
        proc = Proc(label, args, self.log_dir, self.env(), ready=" ready.")
        proc.wait_ready()
        self.procs.append(proc)
        return proc

    def listener(self, name: str = "listener") -> Proc:
        args = [sys.executable, "-m", "worker.listen"]
        proc = Proc(f"{name}-{len(self.procs)}", args, self.log_dir, self.env(), ready="listener: active")
        proc.wait_ready()
        self.procs.append(proc)
        return proc

    def webhook(self) -> Receiver:
        self.receiver = Receiver()
        self.endpoint_id = self.sql(
            "INSERT INTO audit_stream_webhookendpoint (url, description, secret, is_active, filter_models,"
            " filter_labels, consecutive_failures, disabled_reason, created_at)"
            " VALUES (%s, 'faults', %s, true, ARRAY['testapp.product'], ARRAY['snapshot'], 0, '', now())"
            " RETURNING id",
            [self.receiver.url, new_secret()],
        )[0][0]
        return self.receiver

    def writer(self, rate: float = 100.0) -> Writer:
        writer = Writer(lambda **kw: self.cluster.connect(self.db, **kw), rate)
        writer.start()
        self.writers.append(writer)
        return writer

    def count(self, sql: str, params=None) -> int:
        return self.sql(sql, params)[0][0]

    def changes(self) -> int:
        return self.count("SELECT count(*) FROM audit_stream_change")

    def events(self) -> int:
        return self.count("SELECT count(*) FROM testapp_productevent")

    def wait_for(self, what, more: int, timeout: float = 60.0, message: str = "progress") -> int:
        """Wait until ``what()`` (a count) has grown by ``more``; return the new count."""
        start = what()
        return wait_until(
            lambda: (value := what()) >= start + more and value,
            timeout=timeout,
            interval=0.05,
            message=message,
        )

    def assert_consistent(self, timeout: float = 120.0, dead: int = 0) -> None:
        """Every event folded once; every message delivered at least once (``dead`` of them may be
        dead: none by default, as RELIABILITY.md reports); ids never reused."""
        started = time.monotonic()
        events = {
            table: self.count(f'SELECT count(*) FROM "{table}"')
            for table in ("testapp_productevent", "testapp_pricechange")
        }
        for table, total in events.items():
            wait_until(
                lambda t=table, n=total: (
                    self.count("SELECT count(*) FROM audit_stream_change WHERE event_table = %s", [t]) >= n
                ),
                timeout=timeout,
                interval=0.2,
                message=f"{total} changes of {table}",
            )
            changes = self.count("SELECT count(*) FROM audit_stream_change WHERE event_table = %s", [table])
            distinct = self.count(
                "SELECT count(DISTINCT event_id) FROM audit_stream_change WHERE event_table = %s", [table]
            )
            assert changes == distinct == total, (table, total, changes, distinct)
        self.figures.update(events_written=sum(events.values()), folded=sum(events.values()))
        self.figures["fold_catch_up_s"] = round(time.monotonic() - started, 2)
        if self.endpoint_id is None:
            return
        owed = self.count(
            "SELECT count(*) FROM audit_stream_change WHERE model = 'testapp.product' AND label = 'snapshot'"
        )
        wait_until(
            lambda: (
                self.count("SELECT count(*) FROM audit_stream_webhookmessage") >= owed
                and not self.count(
                    "SELECT count(*) FROM audit_stream_webhookmessage WHERE status IN ('pending', 'sending')"
                )
            ),
            timeout=timeout,
            interval=0.2,
            message="every message delivered or dead",
        )
        rows = self.sql("SELECT id, status, change_id FROM audit_stream_webhookmessage")
        assert len(rows) == owed and len({change for _, _, change in rows}) == owed
        delivered = {f"msg_{message_id.hex}" for message_id, status, _ in rows if status == "delivered"}
        found_dead = sum(1 for _, status, _ in rows if status == "dead")
        assert found_dead <= dead, f"{found_dead} dead messages (at most {dead} expected)"
        assert len(delivered) == owed - found_dead
        received = self.receiver.received
        ids = {webhook_id for webhook_id, _ in received}
        assert delivered <= ids, f"{len(delivered - ids)} delivered messages never arrived"
        by_id: dict[str, int] = {}
        for webhook_id, payload in received:
            event = payload["data"]["event_id"]
            assert by_id.setdefault(webhook_id, event) == event, f"{webhook_id} reused for two messages"
        self.figures.update(
            messages=owed, delivered=len(delivered), dead=found_dead, received=len(received),
            duplicates_received=len(received) - len(ids),
        )  # fmt: skip

    def state(self) -> str:
        """What a failed test's report shows besides the logs: Redis's queue and pending marks, the
        unfolded events, and what every session of the test's database is doing or waiting for."""
        lines = []
        try:
            client = redis.Redis(port=self.redis.port, socket_timeout=2)
            lines.append(f"redis: {client.llen('celery')} queued tasks; pending marks:")
            lines += [f"  {key.decode()}" for key in sorted(client.scan_iter("audit_stream:*"))]
        except redis.RedisError as exc:
            lines.append(f"redis: {exc}")
        try:
            lines.append(f"events: {self.events()}, changes: {self.changes()}")
            for row in self.sql(
                "SELECT pid, application_name, state, wait_event_type, wait_event, now() - xact_start,"
                " regexp_replace(left(query, 160), '\\s+', ' ', 'g')"
                " FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() ORDER BY pid"
            ):
                lines.append("  " + " | ".join(str(value) for value in row))
        except psycopg.Error as exc:
            lines.append(f"database: {exc}")
        return "\n".join(lines)

    def close(self) -> None:
        for writer in self.writers:
            writer.stop()
        for proc in self.procs:
            proc.stop()
        if self.receiver:
            self.receiver.down()
        FIGURES.parent.mkdir(exist_ok=True)
        with FIGURES.open("a") as out:
            out.write(json.dumps(self.figures) + "\n")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    if not (Path("/usr/lib/postgresql").exists() and shutil.which("runuser")):
        pytest.skip("the fault suite needs PostgreSQL's server binaries and runuser")
    # Outside pytest's private (0700, root-owned) tmp dir: the postgres user must reach it.
    root = Path(tempfile.mkdtemp(prefix="audit-stream-faults-pg-"))
    root.chmod(0o755)
    cluster = Cluster(root)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": cluster.url("template_faults"),
    }
    with cluster.connect("postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE template_faults")
    subprocess.run([sys.executable, "-m", "django", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def private_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("faults-redis"))
    yield server
    server.stop()


@pytest.fixture
def lanes():
    """How many lanes the products' event table is folded in: 1, unless a test parametrizes it."""
    return 1


@pytest.fixture
def stack(cluster, private_redis, tmp_path, request, lanes):
    # One database per test (parametrized ones included: a name cut at 63 bytes must not make two
    # tests share one), dropped by force should a process of an earlier run still hold it.
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]
    db = f"faults_{request.node.originalname[:40]}_{digest}".lower()
    with cluster.connect("postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}" TEMPLATE template_faults')
    if private_redis.proc is None or private_redis.proc.poll() is not None:
        private_redis.start()
    stack = Stack(cluster, private_redis, db, tmp_path, request.node.name, lanes)
    yield stack
    stack.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" and report.failed and "stack" in item.funcargs:
        stack = item.funcargs["stack"]
        report.sections.append(("state at the failure", stack.state()))
        for proc in stack.procs:
            report.sections.append((f"log of {proc.name}", _log_lines(proc.output())))
    return report


def _log_lines(output: str, limit: int = 12000) -> str:
    """A process's log for a failure report: its timestamped lines, each traceback cut to its last
    line (what was raised), so that the report shows the whole story rather than one traceback."""
    lines, in_traceback = [], False
    for line in output.splitlines():
        if line.startswith(("Traceback ", "During handling", "The above exception")):
            in_traceback = True
        elif in_traceback and not line.startswith((" ", "\t")) and line.strip():
            in_traceback = False
            lines.append("    " + line)  # the exception raised
        elif not in_traceback and line.strip():
            lines.append(line[:300])
    text = "\n".join(lines)
    return text if len(text) <= limit else text[: limit // 3] + "\n...\n" + text[-2 * limit // 3 :]


__all__ = ["Stack", "signal"]
