"""The webhook sender's HTTP client (audit_stream.webhooks.transport) against real receivers on loopback."""

from __future__ import annotations

import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from audit_stream.webhooks import transport


class _Receiver:
    """An HTTP/1.1 receiver that keeps connections alive; records (client port, path, Host, body)."""

    def __init__(self, *, close_after_answer: bool = False, answer: bytes = b"ok", tls=None) -> None:
        self.requests: list[tuple[int, str, str, bytes]] = []
        self.server_names: list[str | None] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append((self.client_address[1], self.path, self.headers["host"], body))
                self.send_response(200)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                # Closing without "Connection: close": what an idle timeout on the receiver does.
                self.close_connection = close_after_answer

            def log_message(self, *args) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def finish_request(self, request, client_address) -> None:
                if tls is not None:  # the handshake in the connection's own thread
                    request.settimeout(5)
                    request = tls.wrap_socket(request, server_side=True)
                super().finish_request(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        if tls is not None:
            tls.set_servername_callback(lambda sock, name, ctx: self.server_names.append(name))
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    found = _Receiver()
    yield found
    found.close()


def _post(pool, port, body=b"{}", host="hooks.example", scheme="http", address="127.0.0.1"):
    headers = {"content-type": "application/json", "host": host}
    return pool.post(scheme, address, port, host.split(":")[0], "/hook?x=1", body, headers)


def test_requests_from_one_thread_share_one_kept_alive_connection(receiver):
    """Twenty POSTs from one thread reach the receiver over one TCP connection."""
    with transport.Pool(2.0, 2.0) as pool:
        answers = [_post(pool, receiver.port, body=str(i).encode()) for i in range(20)]
    assert [a.status_code for a in answers] == [200] * 20
    assert len({port for port, *_ in receiver.requests}) == 1
    assert [body for *_, body in receiver.requests] == [str(i).encode() for i in range(20)]


def test_the_request_carries_the_url_host_and_path_while_going_to_the_checked_address(receiver):
    """The connection goes to the given address; Host and the path are the URL's."""
    with transport.Pool(2.0, 2.0) as pool:
        answer = _post(pool, receiver.port, host="hooks.example:8443")
    ((_, path, host, _),) = receiver.requests
    assert (path, host, answer.text) == ("/hook?x=1", "hooks.example:8443", "ok")


def test_a_connection_the_receiver_closed_while_idle_is_reopened_and_the_request_sent():
    """A kept-alive connection closed by the receiver fails on its next use: sent again on a new one."""
    closing = _Receiver(close_after_answer=True)
    try:
        with transport.Pool(2.0, 2.0) as pool:
            first = _post(pool, closing.port, body=b"1")
            second = _post(pool, closing.port, body=b"2")
        assert (first.status_code, second.status_code) == (200, 200)
        assert [body for *_, body in closing.requests] == [b"1", b"2"]
        assert len({port for port, *_ in closing.requests}) == 2
    finally:
        closing.close()


def test_a_long_answer_is_cut_and_its_connection_not_reused():
    """An answer longer than the bound is read up to it; the next request opens a new connection."""
    long = _Receiver(answer=b"x" * (transport._BODY_LIMIT + 10))
    try:
        with transport.Pool(2.0, 2.0) as pool:
            first = _post(pool, long.port)
            _post(pool, long.port)
        assert len(first.body) == transport._BODY_LIMIT
        assert len({port for port, *_ in long.requests}) == 2
    finally:
        long.close()


def test_nothing_listening_is_a_connect_error():
    """A refused connection raises ConnectError (recorded as the attempt's error)."""
    with transport.Pool(2.0, 2.0) as pool, pytest.raises(transport.ConnectError):
        _post(pool, 9)


def test_a_receiver_that_does_not_answer_is_a_read_timeout():
    """Accepting the connection but never answering is a ReadTimeout after the read timeout."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        with transport.Pool(2.0, 0.3) as pool, pytest.raises(transport.ReadTimeout):
            _post(pool, silent.getsockname()[1])
    finally:
        silent.close()


@pytest.fixture
def tls_receiver(tmp_path, monkeypatch):
    """A TLS receiver with a self-signed certificate for ``localhost``, trusted through SSL_CERT_FILE."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )  # fmt: skip
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    found = _Receiver(tls=context)
    yield found
    found.close()


def test_https_sends_the_url_host_in_sni_and_verifies_the_certificate_for_it(tls_receiver):
    """Over TLS the connection goes to the checked address; SNI and verification use the URL's host."""
    with transport.Pool(2.0, 2.0) as pool:
        answer = _post(pool, tls_receiver.port, scheme="https", host="localhost")
    assert answer.status_code == 200
    assert tls_receiver.server_names == ["localhost"]


def test_https_refuses_a_certificate_for_another_name(tls_receiver):
    """A certificate that does not name the URL's host fails the connection; nothing is sent."""
    with transport.Pool(2.0, 2.0) as pool, pytest.raises(transport.ConnectError, match="TLS"):
        _post(pool, tls_receiver.port, scheme="https", host="hooks.example")
    assert tls_receiver.requests == []
