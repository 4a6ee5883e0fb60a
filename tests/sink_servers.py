"""Real broker servers for the sink tests: the shared ones, and private ones that a test may stop.

The shared servers are the machine's (NATS JetStream 4222, Redis 6379 database 3,
RabbitMQ 5672); every test names its own stream, key prefix or exchange, so
parallel runs never read each other's messages. A :class:`PrivateServer` is a
``redis-server`` or ``nats-server -js`` on a free port, with its store in a
temporary directory, started and stopped by the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import uuid
from pathlib import Path

from tests.procs import wait_until

NATS_URL = "nats://127.0.0.1:4222"
REDIS_URL = "redis://127.0.0.1:6379/3"  # database 3: never Celery's queue
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def unique(prefix: str) -> str:
    """A name no other test (or parallel run) uses."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class PrivateServer:
    """A broker of ``kind`` ("redis" or "nats") on a free port; :meth:`start` and :meth:`stop` at will.

    The NATS server keeps its JetStream store in ``store`` across restarts.
    """

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.port = free_port()
        self.store = root / f"{kind}-store"
        self.store.mkdir(parents=True, exist_ok=True)
        self.log = root / f"{kind}.log"
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0" if self.kind == "redis" else f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self._proc.pid

    def start(self) -> None:
        if self.kind == "redis":
            args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                    "--appendonly", "no", "--dir", str(self.store)]  # fmt: skip
        else:
            args = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)]
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: _listening(self.port), timeout=15, message=f"{self.kind} on port {self.port}")

    def stop(self) -> None:
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGCONT)  # a test may have paused it
            self._proc.terminate()
            self._proc.wait(timeout=15)
            self._proc = None
