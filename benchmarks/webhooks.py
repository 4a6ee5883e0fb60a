"""The webhook benchmark: deliveries per second, and commit-to-receipt latency at a steady write rate.

Usage::

    python -m benchmarks.webhooks            # full run (5 to 8 minutes): BENCHMARKS.md section + JSON
    python -m benchmarks.webhooks --quick    # smoke run (about 1 minute): JSON only

It drops and recreates the database ``audit_stream_bench_webhooks``
(``--database-url``) and flushes Redis database 13 (``--redis-url``). Every
process runs with ``AUDIT_STREAM = {"WEBHOOK_ALLOWED_NETWORKS":
["127.0.0.0/8"]}``. Children, each in its own process group and always
stopped at the end: a receiver on loopback (``python -m
benchmarks.perfapp.receiver``: threaded ``http.server``, HTTP/1.1
keep-alive, answers 204 and records each request's arrival, ``webhook-id``
and ``data.object_id``), a Celery worker (``celery -A worker worker -c 2``),
the listener (``python -m worker.listen``) and a paced writer.

1. Deliveries/s. Messages are real: tracked rows are inserted and folded
   in-process (``fold_all()``), which records one message per change and
   active endpoint. 20,000 messages for 1 endpoint delivered in-process by
   ``audit_stream.webhooks.delivery.deliver(endpoint, max_messages=10**9,
   max_seconds=600)`` (with its time split between claiming, signing,
   HTTP and recording, and the process's CPU per message); again with the
   HTTP client used before (``httpx``, the "before" side of the same run),
   again for an endpoint declared ``ordered`` (per object), and with
   ``synchronous_commit = off`` for the session (a diagnosis, on 2,500);
   then through the worker,
   ``audit_stream.deliver`` enqueued for 4 endpoints (5,000 messages each),
   timed from the enqueue to the last message received.
2. Latency. With the listener and the worker running (NOTIFY on), a writer
   inserts one row per transaction at 100/s, 200/s and 300/s for 15 s each; for each
   row, from its commit (``clock_timestamp()`` in the committing statement)
   to the receiver's arrival time of the message whose ``data.object_id`` is
   the row's pk, split at the fold's start (``Change.folded_at``), with the
   worker's tasks read from its log to tell why a message waited.

Every run checks delivery at least once: every message's ``webhook-id``
reached the receiver, none that is not a message did, every message is
``delivered`` with one attempt; duplicates are counted (and reported).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.perfapp.harness import (
    ROOT,
    Children,
    configure_environment,
    log,
    machine_info,
    migrate,
    recreate_database,
    save_json,
    utc_now,
)
from benchmarks.sections import replace_section
from benchmarks.webhooks_deliveries import deliver_in_process, deliver_with_celery
from benchmarks.webhooks_latency import latency
from benchmarks.webhooks_messages import SETTINGS, Receipts, flush_redis
from benchmarks.webhooks_ordering import ordering_run, ordering_table
from benchmarks.webhooks_report import COMMAND, SECTION, markdown, print_tables

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/audit_stream_bench_webhooks"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes; BENCHMARKS.md untouched")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL, help="dropped and recreated!")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="flushed!")
    parser.add_argument("--no-report", action="store_true", help="print only: no BENCHMARKS.md, no JSON")
    parser.add_argument("--update-migrations", action="store_true", help="regenerate perfapp's migrations")
    parser.add_argument(
        "--ordering", action="store_true",
        help="only ordered against unordered, over many objects and one object (--messages each)",
    )  # fmt: skip
    parser.add_argument("--messages", type=int, help="messages per in-process run")
    args = parser.parse_args(argv)
    messages = args.messages
    args.messages = messages or (2_000 if args.quick else 20_000)
    args.concurrency = 2
    args.latency_rates = [100, 200, 300]
    args.latency_seconds = 5.0 if args.quick else 15.0
    return args


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_environment(args.database_url, args.redis_url, SETTINGS)
    import django

    django.setup()
    started = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="audit_stream_bench_webhooks-"))
    log(f"database {args.database_url}, redis {args.redis_url}; process logs in {log_dir}")
    recreate_database()
    migrate(args.update_migrations, COMMAND)
    flush_redis(args.redis_url)
    results: dict = {
        "date": utc_now(),
        "machine": machine_info(),
        "args": {k: v for k, v in vars(args).items() if k not in ("database_url", "redis_url")},
    }
    children = Children(log_dir)
    out = log_dir / "received.tsv"
    try:
        _, port = children.receiver(out)
        receipts = Receipts(out)
        if args.ordering:
            runs = ordering_run(args, port, receipts)
            print(ordering_table(runs))
            if not args.no_report:
                save_json("webhooks_ordering", {**results, "runs": runs}, True)
            return
        samples = Path(f"{out}.samples.jsonl")
        results["in_process"] = deliver_in_process(args, port, receipts, args.messages, samples=samples)
        results["in_process_httpx"] = deliver_in_process(args, port, receipts, args.messages, client="httpx")
        results["in_process_ordered"] = deliver_in_process(args, port, receipts, args.messages, ordered=True)
        results["in_process_async_commit"] = deliver_in_process(
            args, port, receipts, args.messages // 8, "off"
        )
        results["celery"] = [
            deliver_with_celery(args, port, endpoints, children, receipts) for endpoints in (4,)
        ]
        results["latency"] = latency(args, port, children, receipts, log_dir)
    finally:
        children.stop()
    results["total_seconds"] = time.monotonic() - started
    results["load_at_end"] = os.getloadavg()
    print_tables(results)
    if not args.no_report:
        save_json("webhooks", results, args.quick)
        if not args.quick:
            replace_section(SECTION, markdown(results))
            log(f"updated {(ROOT / 'BENCHMARKS.md').relative_to(ROOT)}")
    log(f"done in {results['total_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
