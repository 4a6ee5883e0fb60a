"""What the faithful feed costs the fold: transaction ids, command ids and transaction sizes.

Usage::

    python -m benchmarks.feed [--events 100000] [--per-transaction 10] [--repeat 3]

Drops and recreates ``audit_stream_bench_feed`` (``FEED_DATABASE_URL``). Writes a
backlog of single-table transactions (``--per-transaction`` rows each) into the
stream benchmark's tracked table, then folds it in-process from no checkpoint
(batches of 5,000) in three variants, ``--repeat`` times each, the order rotating:

* ``no endpoint``: Change rows only (what every fold pays: the transaction and
  command columns and their index);
* ``endpoint``: plus one webhook message per change, with its ``transaction``
  object (the size counted over every stream table's ``pgh_xid`` index);
* ``endpoint, no count``: the same messages with the count skipped, to isolate it.

Prints medians; the write path is not involved (no trigger changed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/audit_stream_bench_feed"


def _setup(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.stream_settings"
    import django

    django.setup()
    from django.core.management import call_command

    from benchmarks import db

    db.recreate_database()
    call_command("migrate", verbosity=0, interactive=False)


def _execute(statement: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement)


def _write_backlog(events: int, per_transaction: int) -> None:
    # One server-side loop, committing every `per_transaction` rows (autocommit DO block).
    _execute(
        f"""DO $$ BEGIN
            FOR i IN 1..{events // per_transaction} LOOP
                INSERT INTO streamapp_trackedrow (name, price, stock, note)
                SELECT 'row ' || g, 10.50, g, '' FROM generate_series(1, {per_transaction}) AS g;
                COMMIT;
            END LOOP;
        END $$"""
    )


def _reset() -> None:
    _execute(
        "TRUNCATE audit_stream_change, audit_stream_checkpoint, audit_stream_webhookmessage,"
        " audit_stream_webhookattempt"
    )
    _execute("VACUUM ANALYZE audit_stream_change")


def _fold_seconds() -> float:
    from audit_stream.stream import fold

    started = time.perf_counter()
    result = fold.fold("streamapp_trackedrowevent", batch_size=5000, max_seconds=600)
    assert result.caught_up
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.feed", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--per-transaction", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", nargs="*", help="only these (e.g. 'no endpoint', to run on older code)")
    args = parser.parse_args(argv)
    _setup(os.environ.get("FEED_DATABASE_URL", DEFAULT_URL))

    from django.test import override_settings

    from audit_stream.webhooks.models import WebhookEndpoint

    try:
        from audit_stream import payload
    except ImportError:  # audit_stream before the faithful feed: 'no endpoint' only
        payload = None

    _write_backlog(args.events, args.per_transaction)
    _execute("VACUUM ANALYZE streamapp_trackedrowevent")
    endpoint = WebhookEndpoint.objects.create(url="https://93.184.215.14/hook", is_active=False)
    counting = payload and payload.transaction_sizes

    def variant(name: str) -> float:
        endpoint.is_active = name != "no endpoint"
        endpoint.save(update_fields=["is_active"])
        if payload is not None:
            payload.transaction_sizes = (
                (lambda cursor, ids: {"xids": [], "sizes": []}) if name == "endpoint, no count" else counting
            )
        _reset()
        return _fold_seconds()

    names = args.variants or ["no endpoint", "endpoint", "endpoint, no count"]
    seconds: dict[str, list[float]] = {name: [] for name in names}
    with override_settings(AUDIT_STREAM={"FOLD_LINGER": 0}):
        for run in range(args.repeat):
            for name in names[run % len(names) :] + names[: run % len(names)]:
                seconds[name].append(variant(name))
    if payload is not None:
        payload.transaction_sizes = counting
    print(f"{args.events:,} events in transactions of {args.per_transaction}; fold batches of 5,000")
    print("| variant | seconds, median (runs) | events/s |")
    print("|---|--:|--:|")
    for name in names:
        median = statistics.median(seconds[name])
        runs = ", ".join(f"{s:.2f}" for s in seconds[name])
        print(f"| {name} | {median:.2f} ({runs}) | {args.events / median:,.0f} |")


if __name__ == "__main__":
    main()
