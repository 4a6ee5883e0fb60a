"""What the stream benchmark watches during a run (benchmarks/stream.py).

NOTIFYs received, when each ``Change`` became visible, the CPU time of the
database's backends, and who used the machine: the stream, the rest of the
benchmark, or other programs (waiting for those to leave it alone first).
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from pathlib import Path

from benchmarks.stream_database import CHANGE, STREAM_APPLICATION_NAME, db_params
from benchmarks.stream_processes import Stack, process_cpu

#: A concurrent-writer run is disturbed when other programs used more of the machine than this.
MAX_OTHER_LOAD = 0.10


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
