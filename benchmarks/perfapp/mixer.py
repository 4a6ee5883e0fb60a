"""``python -m benchmarks.perfapp.mixer --rate R --seconds S --out FILE``: steady mixed writes.

``R`` transactions per second for ``S`` seconds (or until SIGTERM), each in
its own ``audit_stream.context(soak=i)``: an insert of a ``perfapp.Item``
(50%), an update of a live one (35%) or a delete of one (15%), picked by a
fixed-seed generator. Transaction i is due at ``t0 + i / R``; a late one is
sent at once. They are sent by ``--connections`` threads, each with its own
database connection (transaction i by thread ``i % N``), as an application's
requests would be: one connection waiting on its commit would cap the rate
at one over the commit's latency. Writes JSON to ``FILE`` when it stops:
counts per operation, the elapsed time and the largest delay.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import signal
import threading
import time
from decimal import Decimal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--connections", type=int, default=4, help="threads, each with its connection")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    import django

    django.setup()
    from django.db import connection, transaction

    import audit_stream
    from benchmarks.perfapp.models import Item

    pick = random.Random(24)
    lock = threading.Lock()
    live: list[int] = []
    done = {"insert": 0, "update": 0, "delete": 0}
    late = [0.0]
    sent = [0]

    def choose(i: int) -> tuple[str, int | None]:
        """The operation of transaction i and the item it touches, under the lock."""
        with lock:
            roll = pick.random()
            if roll < 0.5 or len(live) < 100:
                return "insert", None
            if roll < 0.85:
                return "update", live[pick.randrange(len(live))]
            return "delete", live.pop(pick.randrange(len(live)))

    def send(lane: int, t0: float) -> None:
        try:
            for i in itertools.count(lane, args.connections):
                due = t0 + i / args.rate
                if due - t0 >= args.seconds or stop.is_set():
                    return
                delay = due - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return
                op, pk = choose(i)
                with transaction.atomic(), audit_stream.context(soak=i):
                    if op == "insert":
                        pk = Item.objects.create(name=f"soak {i}", price=Decimal("9.90"), stock=i, note="").pk
                    elif op == "update":
                        Item.objects.filter(pk=pk).update(stock=i, note=f"update {i}")
                    else:
                        Item.objects.filter(pk=pk).delete()
                with lock:
                    if op == "insert":
                        live.append(pk)  # committed: only now may another thread update or delete it
                    done[op] += 1
                    sent[0] += 1
                    late[0] = max(late[0], -delay)
        finally:
            connection.close()

    print("mixer: ready", flush=True)
    t0 = time.monotonic()
    threads = [threading.Thread(target=send, args=(lane, t0)) for lane in range(args.connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    i, max_late = sent[0], late[0]
    elapsed = time.monotonic() - t0
    with open(args.out, "w") as out:
        written = {"rate": args.rate, "connections": args.connections, "elapsed": elapsed}
        json.dump({**written, "max_late": max_late, "done": done}, out)
    print(f"mixer: {i} transactions in {elapsed:.1f}s", flush=True)


if __name__ == "__main__":
    main()
