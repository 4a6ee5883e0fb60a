"""The webhook benchmark's second measurement: commit-to-receipt latency (benchmarks/webhooks.py).

A paced writer with the listener and the worker running; for each row, from its
commit to the receiver's arrival of its message, split at the fold's start, with
the worker's tasks read from its log to tell why a message waited.
"""

from __future__ import annotations

import argparse
import bisect
import re
import time
from collections import Counter
from pathlib import Path

from benchmarks.perfapp.harness import EVENTS, Children, execute, log, read_writer, summarize_ms
from benchmarks.webhooks_deliveries import TASK_FAILED
from benchmarks.webhooks_messages import SETTINGS, Receipts, reset

SLOW_FOLD_START = 0.1  # seconds from commit to fold start worth explaining
SLOW_DELIVERY = 0.2  # seconds from fold start to receipt worth explaining


# --------------------------------------------------------------------------- 2. latency

# When each row's Change was folded: now() of the fold batch's transaction, i.e. its start.
_FOLDED_SQL = """
SELECT object_id::bigint, extract(epoch FROM folded_at)::float8
FROM audit_stream_change WHERE event_table = %s AND object_id::bigint = ANY(%s)
"""


def latency_run(
    args: argparse.Namespace, rate: int, children: Children, receipts: Receipts, worker, log_dir: Path
) -> dict:
    """A paced writer for ``latency_seconds``; commit-to-receipt latency of every row, and its parts."""
    offset, worker_log = receipts.count(), len(worker.output())
    out = log_dir / f"latency-{rate}.json"
    log(f"latency: {rate} tx/s for {args.latency_seconds:.0f} s")
    writer = children.writer(rate, args.latency_seconds, out)
    try:
        writer.wait(args.latency_seconds + 120)
    finally:
        children.stop(writer)
    data = read_writer(out)
    commits = {pk: committed for _, _, pk, committed in data["rows"]}
    deadline = time.monotonic() + 60
    while True:
        got = receipts.since(offset)
        arrived: dict[int, float] = {}
        for arrival, _, _, event_table, object_id, _ in got:
            if event_table == EVENTS:
                arrived.setdefault(int(object_id), arrival)
        if len(arrived) >= len(commits) or time.monotonic() > deadline:
            break
        worker.check(TASK_FAILED)
        time.sleep(0.2)
    missing = set(commits) - set(arrived)
    worker.check(TASK_FAILED)
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(commits)} rows never reached the receiver")
    ids = Counter(r[2] for r in got)
    parts = {"commit → fold start": [], "fold start → received": []}
    rows = execute(_FOLDED_SQL, [EVENTS, list(commits)])
    text = worker.output()[worker_log:]
    tasks = worker_tasks(text, args.concurrency)
    busy, slow_wait, slow_busy, slow = tasks.pop("all_delivering"), 0.0, 0.0, 0
    delivering, delivery_wait, delivery_idle, delivery_slow = tasks.pop("delivering"), 0.0, 0.0, 0
    for pk, folded_at in rows:
        if arrived[pk] - folded_at > SLOW_DELIVERY:
            delivery_slow += 1
            delivery_wait += arrived[pk] - folded_at
            delivery_idle += arrived[pk] - folded_at - overlap(folded_at, arrived[pk], delivering)
        if folded_at - commits[pk] > SLOW_FOLD_START:
            slow += 1
            slow_wait += folded_at - commits[pk]
            slow_busy += overlap(commits[pk], folded_at, busy)
        parts["commit → fold start"].append(folded_at - commits[pk])
        parts["fold start → received"].append(arrived[pk] - folded_at)
    if len(rows) != len(commits):
        raise RuntimeError(f"{len(rows)} delivered attempts for {len(commits)} rows")
    result = {
        **keeping_up(commits, arrived),
        "rate": rate,
        "rows": len(commits),
        "achieved": len(commits) / data["elapsed"],
        "writer_max_late_ms": data["max_late"] * 1000,
        "latency": summarize_ms([arrived[pk] - commits[pk] for pk in commits]),
        "parts": {name: summarize_ms(values) for name, values in parts.items()},
        "duplicates": len(got) - len(ids),
        "fold_tasks": len(re.findall(r"folded \d+ events of", text)),
        "deliver_tasks": len(re.findall(r"endpoint \d+: \d+ delivered", text)),
        "tasks": tasks,
        "slow_delivery": {
            "threshold_ms": SLOW_DELIVERY * 1000,
            "rows": delivery_slow,
            "waited_s": delivery_wait,
            "no_deliver_task_s": delivery_idle,
        },
        "slow_fold_start": {
            "threshold_ms": SLOW_FOLD_START * 1000,
            "rows": slow,
            "waited_s": slow_wait,
            "all_delivering_s": slow_busy,
        },
    }
    s = result["latency"]
    log(f"  p50 {s['p50']:.0f} ms, p99 {s['p99']:.0f} ms, max {s['max']:.0f} ms")
    return result


_TASK_LINE = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/[^\]]+\] Task audit_stream\.(\w+)\[[0-9a-f-]+\]"
    r" succeeded in ([0-9.]+)s",
    re.MULTILINE,
)


def worker_tasks(text: str, concurrency: int) -> dict:
    """From the worker's log (``-l info``): the fold and deliver tasks that ran, and when.

    ``all_delivering`` are the intervals during which every worker process ran a
    deliver task, so that a fold task had to wait (in Redis: with prefetch 1 and
    late acknowledgement the worker takes no more tasks than it has processes).
    """
    import datetime as dt

    spans: dict[str, list[tuple[float, float]]] = {}
    for stamp, kind, seconds in _TASK_LINE.findall(text):
        end = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, like time.time()
        spans.setdefault(kind, []).append((end - float(seconds), end))
    edges = sorted(
        [(a, 1) for a, _ in spans.get("deliver", [])] + [(b, -1) for _, b in spans.get("deliver", [])]
    )
    running, since, busy = 0, 0.0, []
    for at, step in edges:
        if running >= concurrency and at > since:
            busy.append((since, at))
        running += step
        since = at
    return {
        **{
            kind: {"count": len(items), "run": summarize_ms([b - a for a, b in items])}
            for kind, items in spans.items()
        },
        "all_delivering": busy,
        "all_delivering_s": sum(b - a for a, b in busy),
        "delivering": union(spans.get("deliver", [])),
    }


def union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Merge overlapping intervals."""
    merged: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def overlap(start: float, end: float, intervals: list[tuple[float, float]]) -> float:
    """Seconds of [start, end] covered by the (disjoint) intervals."""
    return sum(max(0.0, min(end, b) - max(start, a)) for a, b in intervals)


def keeping_up(commits: dict[int, float], arrived: dict[int, float]) -> dict:
    """Whether delivery kept up: latency early and late in the run, and the backlog over time.

    The backlog at a commit is the rows committed so far whose message has not
    arrived yet; growing through the run means deliveries fall behind the writes.
    """
    order = sorted(commits, key=commits.get)
    quarter = max(1, len(order) // 4)
    committed = [commits[pk] for pk in order]
    arrivals = sorted(arrived[pk] for pk in order)
    backlog = [i + 1 - bisect.bisect_right(arrivals, t) for i, t in enumerate(committed)]
    return {
        "first_quarter": summarize_ms([arrived[pk] - commits[pk] for pk in order[:quarter]]),
        "last_quarter": summarize_ms([arrived[pk] - commits[pk] for pk in order[-quarter:]]),
        "backlog_max": max(backlog),
        "backlog_at_end": backlog[-1],
        "drain_s": arrivals[-1] - committed[-1],
    }


def latency(args: argparse.Namespace, port: int, children: Children, receipts: Receipts, log_dir) -> list:
    from audit_stream.stream import wakeup
    from audit_stream.webhooks.models import WebhookEndpoint

    reset(args.redis_url)
    WebhookEndpoint.objects.create(url=f"http://127.0.0.1:{port}/latency")
    worker = children.worker(args.concurrency, SETTINGS)
    listener = children.listener(SETTINGS)
    try:
        deadline = time.monotonic() + 10
        while not wakeup.is_armed():
            if time.monotonic() > deadline:
                raise RuntimeError("the listener did not arm the wake-up flag")
            time.sleep(0.05)
        return [latency_run(args, rate, children, receipts, worker, log_dir) for rate in args.latency_rates]
    finally:
        children.stop(listener)
        children.stop(worker)
