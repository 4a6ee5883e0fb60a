"""``python -m benchmarks.perfapp.writer --rate R --seconds S --out FILE``: a paced single-row writer.

Inserts one ``perfapp.Item`` per autocommit transaction (so one event each)
at ``R`` per second for ``S`` seconds, or until SIGTERM, through Django's
connection (with audit_stream's execute wrapper, as an application would).
Transaction i is due at ``t0 + i / R``; a late one is sent at once, so the
achieved rate shows whether it kept up.

Each transaction is ``INSERT ... RETURNING id, clock_timestamp()``: the
commit follows in the same server call, so that timestamp is the commit time
on the database's clock (early by the trigger and the WAL flush, well under
a millisecond). Writes JSON to ``FILE`` when it stops: ``rows`` of
[start (time.time()), latency of the statement and its commit (s), pk,
commit (DB epoch s)].
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from decimal import Decimal

INSERT = (
    "INSERT INTO perfapp_item (name, price, stock, note) VALUES (%s, %s, %s, %s)"
    " RETURNING id, extract(epoch FROM clock_timestamp())::float8"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    import django

    django.setup()
    from django.db import connection

    connection.ensure_connection()
    rows: list[tuple[float, float, int, float]] = []
    max_late = 0.0
    print("writer: ready", flush=True)
    t0 = time.monotonic()
    with connection.cursor() as cursor:
        i = 0
        while not stop.is_set():
            due = t0 + i / args.rate
            if due - t0 >= args.seconds:
                break
            delay = due - time.monotonic()
            if delay > 0:
                if stop.wait(delay):
                    break
            else:
                max_late = max(max_late, -delay)
            started_wall, started = time.time(), time.perf_counter()
            cursor.execute(INSERT, [f"writer row {i}", Decimal("19.90"), i, "writer"])
            pk, committed = cursor.fetchone()
            rows.append((started_wall, time.perf_counter() - started, pk, committed))
            i += 1
    elapsed = time.monotonic() - t0
    with open(args.out, "w") as out:
        json.dump({"rate": args.rate, "elapsed": elapsed, "max_late": max_late, "rows": rows}, out)
    print(f"writer: {len(rows)} transactions in {elapsed:.1f}s", flush=True)


if __name__ == "__main__":
    main()
