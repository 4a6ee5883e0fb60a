"""``--partitioned``: today's batched delete against dropping partitions (benchmarks/retention.py).

The same prune of every aged event, with a paced writer, on the plain event
table and after partitioning it; the partition drop's steps timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from datetime import timedelta
from pathlib import Path

from benchmarks.perfapp.harness import EVENTS, Children, execute, log, read_writer, scalar, summarize_ms
from benchmarks.retention_backlog import BACKLOG, backlog, restore
from benchmarks.retention_pruning import timed_prune

# --------------------------------------------------------------------------- by partition (issue 19)

PARTITIONS_PER_TABLE = 10


def _size_mb() -> float:
    """The event table's size with its indexes, every partition included."""
    return scalar(
        f"SELECT (coalesce((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('{EVENTS}')),"
        f" pg_total_relation_size('{EVENTS}')) / 1e6)::float8"
    )


def _wal() -> str:
    return scalar("SELECT pg_current_wal_lsn()::text")


def _age_partition_bounds() -> None:
    """Set-up only: the full partitions' time bounds move back 100 days with their (aged) events."""
    from django.db import connection

    from audit_stream import partitions

    with connection.cursor() as cursor:
        for part in partitions.partitions(cursor, EVENTS):
            if part.full_before is not None:
                bound = (part.full_before - timedelta(days=100)).isoformat()
                cursor.execute(f"COMMENT ON TABLE {part.name} IS %s", [f"audit_stream: full before {bound}"])


# Set-up only: the partitions' counts as the fold keeps them (audit_stream.partitions.counts).
# The events were folded once, before they were copied aside; restored, they are copied back
# into partitions (new files) that no fold counted.
_COUNT_AS_FOLDED = f"""
INSERT INTO audit_stream_partition_count (partition, filenode, slot, context_id, events)
SELECT (SELECT p.relname FROM pg_class AS p WHERE p.oid = g.tableoid), pg_relation_filenode(g.tableoid), 0,
       coalesce(g.context_id, '00000000-0000-0000-0000-000000000000'), g.events
FROM (
    SELECT e.tableoid, e.pgh_context_id AS context_id, count(*) AS events, grouping(e.pgh_context_id) AS total
    FROM {EVENTS} AS e
    GROUP BY GROUPING SETS ((e.tableoid, e.pgh_context_id), (e.tableoid))
) AS g
WHERE g.total = 1 OR g.context_id IS NOT NULL
"""


def _count_as_folded() -> None:
    """Set-up only: the restored partitions' counts, written as the fold would have written them."""
    execute("DELETE FROM audit_stream_partition_count WHERE partition LIKE %s", [EVENTS + "\\_%"])
    execute(_COUNT_AS_FOLDED)


@contextlib.contextmanager
def _timed_drops():
    """Time retention's partition drops while pruning; yields the steps as (name, start, end) wall times.

    The steps: ``detach`` (one transaction for every partition: the only step
    that locks the table), then ``read_and_drop``, one transaction of ``read``
    (each detached partition's counts read: its rows for the report, its
    events taken off their contexts' counts), ``drop`` (the statement, outside
    the table's lock) and the commit (when the files are unlinked); then
    ``batches`` (the straddling partition's batched delete) and ``contexts``
    (unreferenced contexts).
    """
    from audit_stream import partitions
    from audit_stream.retention import batches, contexts, drops

    spans: list[tuple[str, float, float]] = []
    targets = [
        (drops, "_detach", "detach"),
        (drops, "drop_detached", "read_and_drop"),  # the transaction, its commit (the files' unlink) included
        (drops, "_take_rows", "read"),
        (partitions, "drop_detached", "drop"),
        (batches, "drain", "batches"),
        (contexts, "prune_contexts", "contexts"),
    ]
    originals = [getattr(module, attribute) for module, attribute, _ in targets]

    def timer(original, name):
        def timed(*args, **kwargs):
            started = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                spans.append((name, started, time.time()))

        return timed

    for (module, attribute, name), original in zip(targets, originals, strict=True):
        setattr(module, attribute, timer(original, name))
    try:
        yield spans
    finally:
        for (module, attribute, _), original in zip(targets, originals, strict=True):
            setattr(module, attribute, original)


def _step_seconds(spans: list[tuple[str, float, float]], name: str) -> float:
    return sum(end - start for step, start, end in spans if step == name)


def _slowest_writes(rows: list, bounds: tuple[float, float], spans: list, how_many: int = 5) -> list[dict]:
    """The writer's slowest transactions during the prune, each with the drop steps it overlapped."""
    during = sorted(
        ((start, latency) for start, latency, _, _ in rows if bounds[0] <= start < bounds[1]),
        key=lambda row: -row[1],
    )
    slowest = []
    for start, latency in during[:how_many]:  # latency in seconds
        end = start + latency
        steps = sorted({step for step, s, e in spans if s < end and e > start})
        slowest.append(
            {"ms": latency * 1000, "at_s": start - bounds[0], "overlapped": steps or ["(batches)"]}
        )
    return slowest


def layout_run(args: argparse.Namespace, layout: str, children: Children, log_dir: Path) -> dict:
    """One prune of every aged event with a paced writer: its p99 before and during, WAL and size after."""
    from audit_stream import partitions

    restore(args.rows)
    if layout == "partitioned":
        partitions.ensure(partitions.Layout(EVENTS, args.partition_size, 2))
        _age_partition_bounds()
        _count_as_folded()
    size_before = _size_mb()
    out = log_dir / f"writer-{layout}.json"
    log(
        f"{layout}: writer at {args.writer_rate} tx/s,"
        f" twice {args.baseline_seconds:.0f}s alone, then during a prune"
    )
    writer = children.writer(args.writer_rate, 3600, out)
    try:
        time.sleep(1.0)
        # Two windows alone: the second is the baseline, their ratio this machine's noise.
        control = (time.time(), time.time() + args.baseline_seconds)
        time.sleep(args.baseline_seconds)
        baseline = (time.time(), time.time() + args.baseline_seconds)
        time.sleep(args.baseline_seconds)
        wal_before = _wal()
        if args.prune_nice:
            # The prune's backend (this process's connection) yields the cores to the writer's.
            backend = scalar("SELECT pg_backend_pid()")
            try:
                os.setpriority(os.PRIO_PROCESS, backend, args.prune_nice)
            except OSError as exc:
                raise SystemExit(
                    f"--prune-nice: cannot renice PostgreSQL's backend {backend} ({exc}): run the benchmark"
                    " on the database's machine, as root or as the server's user"
                ) from None
        prune_start = time.time()
        with _timed_drops() as spans:
            result = timed_prune(args.command_batch_size, args.rows)
        during = (prune_start, time.time())
        wal_bytes = scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)::bigint", [wal_before])
        # Also compared over a window as long as the baseline from the prune's start: a prune of
        # a fraction of a second holds a few dozen transactions, whose p99 is their maximum.
        same_length = (prune_start, prune_start + args.baseline_seconds)
        time.sleep(max(0.0, same_length[1] + 0.5 - time.time()))
    finally:
        children.stop(writer)
    data = read_writer(out)

    def window(bounds: tuple[float, float]) -> dict:
        latencies = [lat for start, lat, _, _ in data["rows"] if bounds[0] <= start < bounds[1]]
        return {**summarize_ms(latencies), "seconds": bounds[1] - bounds[0]}

    without, with_prune = window(baseline), window(during)
    found = {
        "layout": layout,
        "seconds": result["seconds"],
        "read_s": _step_seconds(spans, "read"),
        "detach_s": _step_seconds(spans, "detach"),
        "drop_s": _step_seconds(spans, "drop"),
        "commit_s": _step_seconds(spans, "read_and_drop")
        - _step_seconds(spans, "read")
        - _step_seconds(spans, "drop"),
        "detach_and_drop_s": _step_seconds(spans, "detach")
        + _step_seconds(spans, "read_and_drop")
        - _step_seconds(spans, "read"),
        "batches_s": _step_seconds(spans, "batches"),
        "contexts_s": _step_seconds(spans, "contexts"),
        "detach_attempts": sum(1 for step, _, _ in spans if step == "detach"),
        "slowest_writes": _slowest_writes(data["rows"], during, spans),
        "candidates_s": result["candidates_s"],
        "wal_mb": wal_bytes / 1e6,
        "size_before_mb": size_before,
        "size_after_mb": _size_mb(),
        "without": without,
        "during": with_prune,
        "p99_ratio": with_prune["p99"] / without["p99"] if without["p99"] else None,
        "window_from_prune_start": window(same_length),
    }
    found["window_p99_ratio"] = found["window_from_prune_start"]["p99"] / without["p99"]
    found["control"] = window(control)
    found["control_p99_ratio"] = without["p99"] / found["control"]["p99"]
    found["slowest_writes_window"] = _slowest_writes(data["rows"], same_length, spans, 12)
    found["slowest_writes_alone"] = _slowest_writes(data["rows"], baseline, spans, 12)
    found["prune_nice"] = args.prune_nice
    # The windows themselves (epoch seconds) and the writer's file: runs are pooled from
    # them (benchmarks.retention_pool).
    found["windows"] = {"control": control, "baseline": baseline, "from_prune_start": same_length}
    found["writer_file"] = str(out)
    log(f"  {layout}: {json.dumps(found, default=str)}")
    return found


def partitioned_main(
    args: argparse.Namespace, children: Children, log_dir: Path, results: dict, reused: dict | None
) -> None:
    """Today's batched delete on the plain table, then the same prune after partitioning it."""
    from audit_stream import partitions

    args.partition_size = -(-args.rows // PARTITIONS_PER_TABLE)
    results["setup"] = backlog(args, reused)
    layouts = args.layouts.split(",")
    runs = [layout_run(args, "plain", children, log_dir)] if "plain" in layouts else []
    if "partitioned" not in layouts:
        results["layouts"] = runs
        return
    log(f"partitioning {EVENTS}: {args.partition_size:,} ids per partition")
    # Emptied and its ids restarted first, so that the ranges start at id 1 (converted
    # with its rows, the whole table would become one first partition).
    execute(f"TRUNCATE {EVENTS}")
    execute(f"ALTER TABLE {EVENTS} ALTER pgh_id RESTART WITH 1")
    started = time.perf_counter()
    partitions.convert(partitions.Layout(EVENTS, args.partition_size, PARTITIONS_PER_TABLE + 2))
    results["convert_s"] = time.perf_counter() - started
    # The sequence goes on past the aged events (the writer's ids follow them); the
    # ranges it has passed get their time bound (layout_run moves it back with the events).
    highest = scalar(f"SELECT max(pgh_id) FROM {BACKLOG}")
    execute(f"ALTER TABLE {EVENTS} ALTER pgh_id RESTART WITH %s", [highest + 1])
    runs.append(layout_run(args, "partitioned", children, log_dir))
    results["layouts"] = runs
    print(json.dumps(runs, indent=2, default=str))
