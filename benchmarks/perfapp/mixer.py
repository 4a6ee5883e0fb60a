"""``python -m benchmarks.perfapp.mixer --rate R --seconds S --out FILE``: steady mixed writes.

One transaction at a time, at ``R`` per second for ``S`` seconds (or until
SIGTERM), each in its own ``audit_stream.context(soak=i)``: an insert of a
``perfapp.Item`` (50%), an update of a live one (35%) or a delete of one
(15%), picked by a fixed-seed generator. Transaction i is due at ``t0 + i /
R``; a late one is sent at once. Writes JSON to ``FILE`` when it stops:
counts per operation, the elapsed time and the largest delay.
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    import django

    django.setup()
    from django.db import connection, transaction

    import audit_stream
    from benchmarks.perfapp.models import Item

    connection.ensure_connection()
    pick = random.Random(24)
    live: list[int] = []
    done = {"insert": 0, "update": 0, "delete": 0}
    max_late = 0.0
    print("mixer: ready", flush=True)
    t0 = time.monotonic()
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
        roll = pick.random()
        op = "insert" if roll < 0.5 or len(live) < 100 else "update" if roll < 0.85 else "delete"
        with transaction.atomic(), audit_stream.context(soak=i):
            if op == "insert":
                live.append(Item.objects.create(name=f"soak {i}", price=Decimal("9.90"), stock=i, note="").pk)
            elif op == "update":
                Item.objects.filter(pk=live[pick.randrange(len(live))]).update(stock=i, note=f"update {i}")
            else:
                Item.objects.filter(pk=live.pop(pick.randrange(len(live)))).delete()
        done[op] += 1
        i += 1
    elapsed = time.monotonic() - t0
    with open(args.out, "w") as out:
        json.dump({"rate": args.rate, "elapsed": elapsed, "max_late": max_late, "done": done}, out)
    print(f"mixer: {i} transactions in {elapsed:.1f}s", flush=True)


if __name__ == "__main__":
    main()
