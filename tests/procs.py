"""Real processes for end-to-end tests: a Celery worker and the listener.

They run against the test database (committed data only: tests that use them
are ``transaction=True``) and Redis database 15, with their output in a log
file that failing tests print.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def wait_until(predicate, timeout=30.0, interval=0.05, message="condition"):
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def child_env(settings: dict | None = None) -> dict:
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": url,
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"),
        "AUDIT_STREAM_SETTINGS": json.dumps(settings or {}),
        "PYTHONUNBUFFERED": "1",
    }


class Proc:
    """A child process in its own process group, logging to a file."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict, ready: str) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.ready = ready
        self._file = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self._file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0, after: int = 0) -> None:
        """Wait for the ready line; a process that never gets ready is stopped, not left running
        (a listener left behind holds the leader's lock and every later listener stands by)."""
        try:
            wait_until(
                lambda: self.ready in self.output()[after:] or self.popen.poll() is not None,
                timeout,
                message=f"{self.name} to be ready",
            )
        except AssertionError:
            self.stop()
            raise
        if self.popen.poll() is not None:
            raise AssertionError(f"{self.name} exited:\n{self.output()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (``kill -9`` by default)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)
        self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.kill(signal.SIGTERM)
        self._file.close()


def start_worker(
    log_dir: Path, name: str = "worker", settings: dict | None = None, concurrency: int = 1
) -> Proc:
    args = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-l", "info", "-c", str(concurrency),
            "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
    proc = Proc(name, args, log_dir, child_env(settings), ready=" ready.")
    proc.wait_ready()
    return proc


def start_listener(log_dir: Path, name: str = "listener", settings: dict | None = None, ready=True) -> Proc:
    proc = Proc(
        name,
        # The management command a project runs, with the demo's Celery app.
        [sys.executable, "-m", "django", "audit_stream", "listen", "--app", "worker"],
        log_dir,
        child_env(settings),
        "listener: active",
    )
    if ready:
        proc.wait_ready()
    return proc


def start_beat(log_dir: Path, name: str = "beat", sweep_seconds: float = 0.5) -> Proc:
    """Celery beat, sending the sweep every ``sweep_seconds`` (30 s in production)."""
    args = [sys.executable, "-m", "celery", "-A", "worker", "beat", "-l", "info",
            "--schedule", str(log_dir / f"{name}-schedule")]  # fmt: skip
    env = {**child_env(), "AUDIT_STREAM_SWEEP_SECONDS": str(sweep_seconds)}
    proc = Proc(name, args, log_dir, env, ready="beat: Starting")
    proc.wait_ready()
    return proc
