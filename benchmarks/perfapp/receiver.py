"""``python -m benchmarks.perfapp.receiver --out FILE``: a webhook receiver on loopback that answers 204.

A threaded ``http.server`` speaking HTTP/1.1 (so a sender's connection is
kept alive), with a listen backlog of 1024, on 127.0.0.1 and a free port, printed as
``receiver: listening on <port>``. For every POST it appends one
tab-separated line to ``FILE`` (shown here on two lines)::

    <arrival time.time()>  <path>  <webhook-id>  <data.event_table>  <data.object_id>  <data.event_id>
    <signature>

where ``<signature>`` is ``ok`` or ``bad`` when ``--secret`` is given (every
request verified with ``standardwebhooks``), else ``-``,

and the first ``--keep`` requests in full (headers and body) to
``FILE.samples.jsonl``, so the benchmark can verify their signatures.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--keep", type=int, default=20, help="requests kept in full")
    parser.add_argument("--secret", help="verify every request's signature with this endpoint secret")
    args = parser.parse_args()
    lock = threading.Lock()
    out = open(args.out, "a", buffering=1)  # noqa: SIM115 - open for the life of the process
    samples = open(args.out + ".samples.jsonl", "a", buffering=1)  # noqa: SIM115
    kept = [0]
    verifier = None
    if args.secret:
        from standardwebhooks.webhooks import Webhook

        verifier = Webhook(args.secret)

    def _signature(body: bytes, headers) -> str:
        if verifier is None:
            return "-"
        try:
            verifier.verify(body.decode(), dict(headers))
        except Exception:  # any failure to verify is a bad signature
            return "bad"
        return "ok"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            arrival = time.time()
            try:
                data = json.loads(body).get("data", {})
            except ValueError:
                data = {}
            line = "\t".join(
                str(value)
                for value in (
                    f"{arrival:.6f}",
                    self.path,
                    self.headers.get("webhook-id", ""),
                    data.get("event_table", ""),
                    data.get("object_id", ""),
                    data.get("event_id", ""),
                    _signature(body, self.headers),
                )
            )
            with lock:
                out.write(line + "\n")
                if kept[0] < args.keep:
                    kept[0] += 1
                    sample = {"path": self.path, "headers": dict(self.headers), "body": body.decode()}
                    samples.write(json.dumps(sample) + "\n")
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        # socketserver's default listen backlog is 5: a burst of new connections (a
        # sender opening several at once) would overflow it, and each dropped SYN
        # costs the sender a 1 s retransmission.
        request_queue_size = 1024

    server = Server(("127.0.0.1", 0), Handler)
    print(f"receiver: listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
