"""Run one workload on one variant: reset, prepare, time, and check what was recorded."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

from benchmarks import db, notify
from benchmarks.variants import Variant
from benchmarks.workloads import Workload


class WrongEventCount(AssertionError):
    """A tracked variant did not record exactly the events the workload implies."""


@dataclass(frozen=True)
class Counts:
    """Row counts that tell what a run wrote."""

    items: int
    events: int
    events_with_context: int
    contexts: int
    notifications: int = 0


def counts(variant: Variant) -> Counts:
    """The current counts for a variant's tables."""
    items = db.count(variant.model._meta.db_table)
    if variant.event_model is None:
        return Counts(items, 0, 0, 0)
    events_table = variant.event_model._meta.db_table
    return Counts(
        items=items,
        events=db.count(events_table),
        events_with_context=db.count(events_table, "pgh_context_id IS NOT NULL"),
        contexts=db.count(variant.context_table),
        notifications=notify.received(variant),
    )


def reset_tables(variant: Variant) -> list[str]:
    """The tables emptied before each run: the variant's, and the library's context table."""
    return variant.tables + ([variant.context_table] if variant.context_table else [])


def measure(workload: Workload, variant: Variant, category_ids: list[int]) -> float:
    """Seconds the workload takes on the variant, after checking its events.

    Raises:
        WrongEventCount: If the events (or items, or contexts) written are not
            exactly what the workload implies.
    """
    global _last_cpu
    prepare(variant, category_ids, prefill=workload.prefill)
    timed = workload.prepare(variant, workload.rows, category_ids)
    before = counts(variant)
    pid = db.backend_pid()
    gc.collect()
    with notify.variant_settings(variant):
        cpu = _backend_cpu(pid) + time.process_time()
        start = time.perf_counter()
        timed()
        seconds = time.perf_counter() - start
        _last_cpu = _backend_cpu(pid) + time.process_time() - cpu
    check(workload, variant, before, counts(variant))
    return seconds


#: CPU seconds of the last :func:`measure` (see :func:`last_cpu`).
_last_cpu = float("nan")


def last_cpu() -> float:
    """CPU seconds the last measured run used: its PostgreSQL backend plus this process.

    On a shared machine wall time includes waiting for the CPU and for other
    sessions' commits; CPU time counts only the work done, so it varies far less.
    """
    return _last_cpu


def _backend_cpu(pid: int) -> float:
    """CPU seconds the PostgreSQL backend ``pid`` has run (Linux ``/proc/<pid>/schedstat``, in ns)."""
    try:
        with open(f"/proc/{pid}/schedstat") as stat:
            return int(stat.read().split()[0]) / 1e9
    except OSError:  # the server is on another machine
        return float("nan")


def prepare(variant: Variant, category_ids: list[int], prefill: int = 0) -> None:
    """Empty the tables, prefill the rows an update or delete works on, arm the wake-up flag."""
    tables = reset_tables(variant)
    db.reset(tables)
    if prefill:
        db.prefill(variant.model._meta.db_table, prefill, category_ids)
        db.vacuum(tables)
    notify.arm(variant)


def check(workload: Workload, variant: Variant, before: Counts, after: Counts) -> None:
    """Fail loudly unless the run wrote exactly the expected rows, events, contexts and NOTIFYs."""
    tracked = variant.event_model is not None
    expected = Counts(
        items=workload.rows_after,
        events=before.events + (workload.rows if tracked else 0),
        events_with_context=before.events_with_context
        + (workload.rows if tracked and workload.in_context else 0),
        contexts=before.contexts
        + (0 if not (tracked and workload.in_context) else workload.rows if workload.context_per_row else 1),
        notifications=notify.expected(variant),
    )
    if after != expected:
        raise WrongEventCount(
            f"{workload.key} on {variant.key}: expected {expected}, got {after} (before: {before})"
        )
