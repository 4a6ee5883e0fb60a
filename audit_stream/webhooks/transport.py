"""The webhook sender's HTTP client: POSTs over kept-alive connections, one per sending thread.

Built on the standard library's ``http.client`` rather than ``httpx``: on this
project's machine a POST to a local receiver costs about 135 µs of CPU through
``http.client`` against about 700 µs through ``httpx`` (BENCHMARKS.md,
"Webhook delivery: the HTTP client"), and the sender's CPU is what bounds the
deliveries per second of one worker process.

What the sender needs, and nothing else: the request goes to the address the
URL safety check resolved (never resolved again, so a DNS answer cannot
change between the check and the connection), with the URL's host in
``Host`` and, for ``https``, in TLS SNI and certificate verification;
separate connect and read timeouts; redirects are never followed; the
response body is read up to a bound (a connection whose answer is longer is
closed rather than drained). A connection the receiver closed while it was
idle is reopened once, transparently (webhooks are delivered at least once).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading

__all__ = ["ConnectError", "ConnectTimeout", "Pool", "ReadTimeout", "Response", "TransportError"]

_BODY_LIMIT = 64 * 1024  # a longer answer closes its connection instead of being drained


class TransportError(Exception):
    """The request failed before an HTTP answer was read (the attempt is retried)."""


class ConnectError(TransportError):
    """The connection (or the TLS handshake) could not be made."""


class ConnectTimeout(ConnectError):
    """Connecting took longer than the connect timeout."""


class ReadTimeout(TransportError):
    """Sending the request or reading its answer took longer than the read timeout."""


class Response:
    """An answer: its status, its headers (names in lower case) and the start of its body."""

    __slots__ = ("body", "headers", "status_code")

    def __init__(self, status_code: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _Connection(http.client.HTTPConnection):
    """An HTTP connection to a fixed address, with separate connect and read timeouts."""

    def __init__(self, address: str, port: int, connect: float, read: float) -> None:
        super().__init__(address, port, timeout=read)
        self._connect_timeout = connect

    def _open_socket(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.host, self.port), self._connect_timeout)
        except TimeoutError as exc:
            raise ConnectTimeout(f"connecting to {self.host}:{self.port} timed out") from exc
        except OSError as exc:
            raise ConnectError(str(exc)) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.timeout)
        return sock

    def connect(self) -> None:
        self.sock = self._open_socket()


class _TLSConnection(_Connection):
    """The same over TLS: the certificate is verified for ``server_name``, sent in SNI."""

    def __init__(self, address: str, port: int, connect: float, read: float, server_name: str) -> None:
        super().__init__(address, port, connect, read)
        self._server_name = server_name
        self._context = ssl.create_default_context()

    def connect(self) -> None:
        sock = self._open_socket()
        try:
            self.sock = self._context.wrap_socket(sock, server_hostname=self._server_name)
        except TimeoutError as exc:
            sock.close()
            raise ConnectTimeout(f"TLS handshake with {self._server_name} timed out") from exc
        except (ssl.SSLError, OSError, ValueError) as exc:
            sock.close()
            raise ConnectError(f"TLS with {self._server_name}: {exc}") from exc


# A kept-alive connection the receiver closed while idle fails like this on its next use.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class Pool:
    """Kept-alive connections, one per (sending thread, target); close them all with :meth:`close`."""

    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._local = threading.local()
        self._all: list[_Connection] = []
        self._lock = threading.Lock()

    def post(
        self, scheme: str, address: str, port: int, host: str, path: str, body: bytes, headers: dict[str, str]
    ) -> Response:
        """POST ``body`` to ``address:port``; ``host``: the TLS name (``Host`` is in ``headers``).

        Raises :class:`TransportError` (or a subclass) when no answer could be read.
        """
        key = (scheme, address, port, host)
        connections = self._connections()
        reused = key in connections
        connection = connections.get(key) or self._open(key)
        connections[key] = connection
        try:
            return self._exchange(connection, path, body, headers)
        except _STALE:
            self._drop(key)
            if not reused:
                raise ConnectError("the receiver closed the connection without answering") from None
        # The receiver had closed the kept-alive connection: once more on a new one.
        connection = connections[key] = self._open(key)
        try:
            return self._exchange(connection, path, body, headers)
        except _STALE as exc:
            self._drop(key)
            raise ConnectError(f"the receiver closed the connection without answering: {exc}") from None

    def _connections(self) -> dict:
        found = getattr(self._local, "connections", None)
        if found is None:
            found = self._local.connections = {}
        return found

    def _open(self, key: tuple) -> _Connection:
        scheme, address, port, host = key
        if scheme == "https":
            connection = _TLSConnection(address, port, self.connect_timeout, self.read_timeout, host)
        else:
            connection = _Connection(address, port, self.connect_timeout, self.read_timeout)
        with self._lock:
            self._all.append(connection)
        return connection

    def _drop(self, key: tuple) -> None:
        connection = self._connections().pop(key, None)
        if connection is not None:
            connection.close()

    def _exchange(self, connection: _Connection, path: str, body: bytes, headers: dict[str, str]) -> Response:
        try:
            connection.request("POST", path, body=body, headers=headers)
            answer = connection.getresponse()
            data = answer.read(_BODY_LIMIT)
            if not answer.isclosed():
                connection.close()  # a longer body than we read: not worth draining
            return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, data)
        except _STALE:
            raise
        except TimeoutError as exc:
            connection.close()
            raise ReadTimeout("no answer within the read timeout") from exc
        except TransportError:
            connection.close()
            raise
        except (http.client.HTTPException, OSError) as exc:
            connection.close()
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Close every connection any thread opened."""
        with self._lock:
            connections, self._all = self._all, []
        for connection in connections:
            connection.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
