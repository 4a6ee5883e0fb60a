"""Concurrent writers: N OS processes, each with its own Django connection, inserting for a fixed time.

The processes are started once (``spawn``: each runs ``django.setup()``) and
reused for every variant and repetition, so process start-up is not timed.
A barrier releases all writers together.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass
from decimal import Decimal

from benchmarks import notify, runner
from benchmarks.variants import Variant

# Set in each writer process by _init().
_barrier = None


def _init(barrier) -> None:
    """Writer start-up: configure Django and connect once."""
    global _barrier
    _barrier = barrier
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    import django

    django.setup()
    from django.db import connection

    connection.ensure_connection()


def _write_for(model_name: str, seconds: float, category_ids: list[int], writer: int) -> tuple[int, float]:
    """Insert single rows (one autocommit transaction each) for ``seconds``; return (rows, elapsed)."""
    from django.apps import apps

    manager = apps.get_model("benchapp", model_name).objects
    _barrier.wait(timeout=60)
    start = time.perf_counter()
    deadline = start + seconds
    rows = 0
    while time.perf_counter() < deadline:
        manager.create(
            name=f"writer {writer} item {rows}",
            price=Decimal("19.90"),
            stock=rows,
            note="written by a concurrent writer",
            category_id=category_ids[rows % len(category_ids)],
        )
        rows += 1
    return rows, time.perf_counter() - start


@dataclass
class Writers:
    """A pool of writer processes."""

    count: int
    pool: multiprocessing.pool.Pool

    @classmethod
    def start(cls, count: int) -> Writers:
        """Start ``count`` writer processes (each connects before its first run)."""
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(count)
        pool = ctx.Pool(count, initializer=_init, initargs=(barrier,))
        return cls(count, pool)

    def run(self, variant: Variant, seconds: float, category_ids: list[int]) -> float:
        """Transactions per second of all writers together on the variant, after checking its events."""
        runner.prepare(variant, category_ids)
        before = runner.counts(variant)
        args = [(variant.model_name, seconds, category_ids, w) for w in range(self.count)]
        results = self.pool.starmap(_write_for, args, chunksize=1)
        rows = sum(r for r, _ in results)
        elapsed = max(e for _, e in results)
        _check(variant, before, rows)
        return rows / elapsed

    def close(self) -> None:
        """Stop the writer processes."""
        self.pool.close()
        self.pool.join()


def _check(variant: Variant, before: runner.Counts, rows: int) -> None:
    """Every committed insert must have exactly one event (tracked variants)."""
    after = runner.counts(variant)
    tracked = variant.event_model is not None
    expected = runner.Counts(rows, before.events + (rows if tracked else 0), 0, 0, notify.expected(variant))
    if after != expected:
        raise runner.WrongEventCount(
            f"concurrent inserts on {variant.key}: {rows} rows written, expected {expected}, got {after}"
        )
