"""Real broker servers for the sink tests: the shared ones, and private ones that a test may stop.

The shared servers are the machine's (NATS JetStream 4222, Redis 6379 database 3,
RabbitMQ 5672); every test names its own stream, key prefix or exchange, so
parallel runs never read each other's messages. A :class:`PrivateServer` is a
``redis-server`` or ``nats-server -js`` on a free port, with its store in a
temporary directory, started and stopped by the test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
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

    The NATS server keeps its JetStream store in ``store`` across restarts; so does
    Redis when ``durable`` (else, as on this machine's Redis, a restart empties it).
    """

    def __init__(self, kind: str, root: Path, *, durable: bool = False) -> None:
        self.kind = kind
        self.durable = durable  # Redis: an append-only file, fsynced at every write, kept across restarts
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
            persistence = (
                ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
            )
            args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                    *persistence, "--dir", str(self.store)]  # fmt: skip
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


class AckWithholdingProxy:
    """A TCP proxy to a broker that stops passing the broker's replies once the client publishes.

    Everything the client sends reaches the broker (which stores the messages);
    from the first chunk holding ``publish_marker`` on, nothing the broker sends
    back reaches the client, so its acknowledgements never come: the moment a
    worker killed mid-batch has published but recorded nothing. Each accepted
    connection is pumped by two daemon threads; :meth:`close` ends them all.
    """

    def __init__(self, upstream_port: int, publish_marker: bytes) -> None:
        self.upstream_port = upstream_port
        self.marker = publish_marker
        self.withholding = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if from_client and self.marker in chunk:
                    self.withholding.set()
                if from_client or not self.withholding.is_set():
                    sink.sendall(chunk)
        except OSError:
            pass
        finally:  # one side gone: the other sees it too (a killed worker's broker connection closes)
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()


RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")  # the scripts themselves, not /usr/sbin's wrappers (user switch)


class PrivateRabbitMQ:
    """A RabbitMQ node of its own (name, ports, database, cookie in ``root``), so a test may stop it.

    ``rabbitmq-server -detached`` with ``RABBITMQ_NODENAME``, ``RABBITMQ_NODE_PORT``
    and ``RABBITMQ_MNESIA_BASE`` pointing into ``root``, no plugins; the shared
    node on 5672 is never touched.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.node = f"{unique('i20t')}@localhost"
        (root / "home").mkdir(parents=True, exist_ok=True)
        (root / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (root / "enabled_plugins").write_text("[].\n")
        self.env = {
            **os.environ,
            "HOME": str(root / "home"),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(root / "log"),
            "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(root / "rabbitmq.pid"),
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [RABBITMQ_BIN / "rabbitmqctl", "-n", self.node, *args],
            env=self.env, cwd=self.root, check=check, capture_output=True, timeout=120,
        )  # fmt: skip

    def start(self) -> None:
        subprocess.run(
            [RABBITMQ_BIN / "rabbitmq-server", "-detached"],
            env=self.env,
            cwd=self.root,  # where Erlang writes a crash dump, if any
            check=True,
            capture_output=True,
            timeout=60,
        )
        # Until the node has registered, rabbitmqctl cannot reach it (exit status 69): ask again.
        wait_until(
            lambda: self._ctl("await_startup", check=False).returncode == 0,
            timeout=120, interval=1, message=f"RabbitMQ node {self.node} started",
        )  # fmt: skip
        wait_until(lambda: _listening(self.port), timeout=60, message=f"RabbitMQ on port {self.port}")

    def stop_app(self) -> None:
        self._ctl("stop_app")

    def start_app(self) -> None:
        self._ctl("start_app")
        wait_until(lambda: _listening(self.port), timeout=60, message=f"RabbitMQ on port {self.port}")

    def stop(self) -> None:
        try:
            self._ctl("stop")
        except (subprocess.SubprocessError, OSError):  # not answering: end it by its pid
            pid_file = self.root / "rabbitmq.pid"
            if pid_file.exists():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
