"""The stream processes the stream benchmark starts: a Celery worker and the listener (benchmarks/stream.py).

Each runs as a child in its own process group (session), logging to a file,
and is always killed at the end; its CPU time is read from /proc.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.stream_database import ROOT, SETTINGS_MODULE, STREAM_APPLICATION_NAME, log

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
