"""The stream benchmark's writer processes: paced or as-fast-as-possible inserts (benchmarks/stream.py).

Spawned by :func:`writer_pool`, each with ``django.setup()`` and a connection;
the functions they run are module-level, so that the pool can pickle them.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from decimal import Decimal

from benchmarks.stream_database import TRACKED

# --------------------------------------------------------------------------- writer processes


def _init_writer() -> None:
    """Writer process start-up: configure Django and connect once."""
    os.environ["BENCH_APPLICATION_NAME"] = "bench writer"
    import django

    django.setup()
    from django.db import connection

    connection.ensure_connection()


def _sleep_until(wall_time: float) -> None:
    delay = wall_time - time.time()
    if delay > 0:
        time.sleep(delay)


def _new_row(model, writer: int, i: int):
    return model(name=f"writer {writer} row {i}", price=Decimal("19.90"), stock=i, note="stream benchmark")


def paced_writes(rate: float, seconds: float, start_at: float, phase: float, writer: int) -> dict:
    """Insert one tracked row per transaction at ``rate`` per second, on a fixed schedule.

    Transaction i is due at ``t0 + (i + phase) / rate`` (monotonic clock); a
    late one is sent at once, so the achieved rate shows whether the writer
    kept up. Each is one autocommit ``INSERT ... RETURNING id, clock_timestamp()``:
    the server commits right after evaluating it, in the same round trip, so
    that timestamp is the commit time (less the trigger's and the WAL flush's
    fraction of a millisecond) on the database's clock, whatever the writer's
    scheduling. ``time.time()`` right after the commit is kept too, to show
    how late a client-side "after commit" reading can be on a busy machine.
    """
    from django.db import connection

    count = int(rate * seconds)
    commits: list[tuple[int, float, float]] = []
    max_late = 0.0
    insert = (
        f"INSERT INTO {TRACKED} (name, price, stock, note) VALUES (%s, %s, %s, %s)"
        " RETURNING id, extract(epoch FROM clock_timestamp())::float8"
    )
    _sleep_until(start_at)
    t0 = time.monotonic()
    with connection.cursor() as cursor:
        for i in range(count):
            delay = t0 + (i + phase) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                max_late = max(max_late, -delay)
            cursor.execute(insert, [f"writer {writer} row {i}", Decimal("19.90"), i, "stream benchmark"])
            pk, committed = cursor.fetchone()
            commits.append((pk, committed, time.time()))
    return {"commits": commits, "elapsed": time.monotonic() - t0, "max_late": max_late}


def timed_writes(table: str, seconds: float, start_at: float, writer: int) -> int:
    """Insert one row per transaction, as fast as possible, for ``seconds``; return the count."""
    from benchmarks.streamapp.models import PlainRow, TrackedRow

    model = TrackedRow if table == TRACKED else PlainRow
    _sleep_until(start_at)
    deadline = time.monotonic() + seconds
    rows = 0
    while time.monotonic() < deadline:
        _new_row(model, writer, rows).save()
        rows += 1
    return rows


def writer_pool(count: int):
    """``count`` spawned writer processes, each with ``django.setup()`` and a connection."""
    ctx = multiprocessing.get_context("spawn")
    return ctx.Pool(count, initializer=_init_writer)
