"""The sink benchmark: messages/s published from one process to each broker, beside webhook delivery.

Usage::

    python -m benchmarks.sinks                     # 20,000 messages per target
    python -m benchmarks.sinks --messages 2000     # smoke run

It drops and recreates the database ``audit_stream_bench_sinks`` (``--database-url``),
migrates it with ``tests.settings``, and for each target in turn: inserts
``--messages`` tracked rows and folds them in-process (``fold_all()``, which
records one message per change for the one active sink or endpoint), then times
one in-process call of ``audit_stream.sinks.delivery.deliver`` (claims of 2,000
messages, each batch published pipelined, outcomes recorded per batch) or of
``audit_stream.webhooks.delivery.deliver`` to a receiver on loopback
(``benchmarks.perfapp.receiver``). Each run checks that every message is
``delivered`` and that the broker holds (or the receiver got) that many, and
reports, besides wall time, the CPU time per message of this process (all its
threads: the delivery claims and records on threads of its own) and of the
PostgreSQL backends it used (``/proc/<pid>/schedstat``): on a shared machine
the wall time is mostly waiting for a core, the CPU time is the work. The
brokers are the machine's: NATS 4222 (a fresh stream, deleted after), Redis
6379 database 3 (a fresh key, deleted after), RabbitMQ 5672 (a fresh exchange
and stream queue, deleted after).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setup(database_url: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    os.environ["DATABASE_URL"] = database_url
    os.environ["AUDIT_STREAM_SETTINGS"] = json.dumps({"WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8"]})
    import django
    import psycopg

    base, name = database_url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _messages(n: int, tag: str) -> None:
    """``n`` changes folded: one message each for the one active sink or endpoint."""
    from audit_stream.stream import fold
    from tests.testapp.models import Product

    Product.objects.bulk_create([Product(name=f"{tag}-{i}") for i in range(n)], batch_size=5000)
    fold.fold_all()


def _schedstat(pid: int) -> float | None:
    """CPU seconds process ``pid`` has run (Linux ``/proc/<pid>/schedstat``, in ns); None once it is gone."""
    try:
        with open(f"/proc/{pid}/schedstat") as stat:
            return int(stat.read().split()[0]) / 1e9
    except OSError:
        return None


class _BackendCPU(threading.Thread):
    """CPU seconds of the PostgreSQL backends this process uses while it runs, its threads' ones too.

    The main connection's backend, and each one a thread opens (the delivery's
    recorder) as Django creates it; each is read every 5 ms until it exits, so
    the last few milliseconds of a closing backend may be missed.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.start_cpu: dict[int, float] = {}
        self.last_cpu: dict[int, float] = {}
        self._done = threading.Event()

    def _add(self, pid: int, baseline: bool) -> None:
        cpu = _schedstat(pid)
        if cpu is not None and pid not in self.start_cpu:
            self.start_cpu[pid] = cpu if baseline else 0.0
            self.last_cpu[pid] = cpu

    def _created(self, sender, connection, **kwargs) -> None:
        self._add(connection.connection.info.backend_pid, baseline=False)

    def __enter__(self) -> _BackendCPU:
        from django.db import connection
        from django.db.backends.signals import connection_created

        connection.ensure_connection()
        self._add(connection.connection.info.backend_pid, baseline=True)
        connection_created.connect(self._created)
        self.start()
        return self

    def run(self) -> None:
        while not self._done.wait(0.005):
            for pid in list(self.last_cpu):
                cpu = _schedstat(pid)
                if cpu is not None:
                    self.last_cpu[pid] = cpu

    def __exit__(self, *exc) -> None:
        from django.db.backends.signals import connection_created

        self._done.set()
        self.join()
        connection_created.disconnect(self._created)

    @property
    def seconds(self) -> float:
        return sum(self.last_cpu[pid] - self.start_cpu[pid] for pid in self.last_cpu)


def _time(call, n: int) -> dict:
    """Wall seconds of ``call()``, and CPU microseconds per message of this process and of PostgreSQL."""
    with _BackendCPU() as backends:
        cpu = time.process_time()
        started = time.perf_counter()
        result = call()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    assert result.failed == 0, result.errors
    return {
        "seconds": elapsed,
        "per_second": n / elapsed,
        "worker_cpu_us": cpu / n * 1e6,
        "postgres_cpu_us": backends.seconds / n * 1e6,
    }


_TABLE_STATS_SQL = """
SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'audit_stream_sinkmessage'
"""


def _table_stats() -> tuple[int, int]:
    """Row updates and HOT updates of the sink message table so far (every backend's, flushed)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
        time.sleep(1.1)  # a backend flushes its counts at most once a second (PostgreSQL 15)
        cursor.execute(_TABLE_STATS_SQL)
        return cursor.fetchone()


def bench_sink(kind: str, target: str, options: dict, n: int, mode: str = "held") -> dict:
    """Deliver ``n`` messages to a fresh sink; ``mode="leased"``: an unordered sink through the leased
    path (a lease per batch, then the outcomes: what every sink did before batches were held)."""
    from audit_stream.models import Sink, SinkMessage, WebhookEndpoint
    from audit_stream.sinks import delivery

    Sink.objects.update(is_active=False)
    WebhookEndpoint.objects.update(is_active=False)
    sink = Sink.objects.create(
        name=f"bench-{kind}-{uuid.uuid4().hex[:6]}", kind=kind, target=target, options=options
    )
    _messages(n, f"{kind}-{mode}-{sink.pk}")
    lanes = delivery._lanes
    if mode == "leased":
        delivery._lanes = lambda sink: delivery._LeasedLanes(sink.pk)
    updates, hot = _table_stats()
    try:
        timing = _time(lambda: delivery.deliver(sink.pk, max_messages=10**9, max_seconds=600), n)
    finally:
        delivery._lanes = lanes
    updates_after, hot_after = _table_stats()
    delivered = SinkMessage.objects.filter(sink=sink, status="delivered").count()
    assert delivered == n, f"{delivered} of {n} delivered"
    return {
        "target": kind,
        "mode": mode,
        "messages": n,
        **timing,
        "row_updates_per_msg": (updates_after - updates) / n,
        "hot_share": (hot_after - hot) / max(1, updates_after - updates),
    }


def explain(n: int) -> None:
    """EXPLAIN (ANALYZE, BUFFERS, WAL) of a batch's claim and record, held and leased, rolled back."""
    from django.db import connection, transaction

    from audit_stream.models import Sink, WebhookEndpoint
    from audit_stream.sinks import delivery

    Sink.objects.update(is_active=False)
    WebhookEndpoint.objects.update(is_active=False)
    sink = Sink.objects.create(
        name=f"explain-{uuid.uuid4().hex[:6]}", kind="redis", target="redis://127.0.0.1:6379/3"
    )
    _messages(n, f"explain-{sink.pk}")
    params = {"subscriber": sink.pk, "limit": n, "floor": None}

    def show(title, sql, values):
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS, WAL, VERBOSE OFF) " + sql, values)
            print(f"--- {title}")
            print("\n".join(row[0] for row in cursor.fetchall()))

    class _Undo(Exception):
        pass

    for mode in ("leased", "held"):
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                if mode == "held":
                    show("held: claim (locks, reads)", delivery._HELD_CLAIM_SQL, params)
                    cursor.execute("SELECT id FROM audit_stream_sinkmessage WHERE sink_id = %s", [sink.pk])
                    ids = [row[0] for row in cursor.fetchall()]
                else:
                    show("leased: lock", delivery._LOCK_SQL, params)
                    cursor.execute(delivery._LOCK_SQL, params)
                    ids = [row[0] for row in cursor.fetchall()]
                    lease = {"ids": ids, "lease": "60 seconds"}
                    show("leased: lease (status 'sending')", delivery._CLAIM_SQL, lease)
                show(f"{mode}: record delivered", delivery._DELIVERED_SQL, {"ids": [str(i) for i in ids]})
                raise _Undo
        except _Undo:
            pass


def bench_webhook(n: int) -> dict:
    from audit_stream.models import Sink, WebhookEndpoint, WebhookMessage
    from audit_stream.webhooks import delivery

    Sink.objects.update(is_active=False)
    out = Path(tempfile.mkdtemp(prefix="audit_stream_bench_sinks-")) / "received.tsv"
    receiver = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.perfapp.receiver", "--out", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        port = int(receiver.stdout.readline().rsplit(" ", 1)[1])
        endpoint = WebhookEndpoint.objects.create(url=f"http://127.0.0.1:{port}/hook")
        _messages(n, "webhook")
        timing = _time(lambda: delivery.deliver(endpoint.pk, max_messages=10**9, max_seconds=600), n)
        delivered = WebhookMessage.objects.filter(endpoint=endpoint, status="delivered").count()
        assert delivered == n, f"{delivered} of {n} delivered"
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
    return {"target": "webhook", "messages": n, **timing}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/audit_stream_bench_sinks"
    )
    parser.add_argument("--targets", default="nats,redis,rabbitmq,webhook")
    parser.add_argument(
        "--modes", default="held",
        help="held (how a sink not ordered delivers), leased (its former path: a lease, then the"
        " outcomes), or both, alternating: held,leased",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1, help="repeat the targets and modes")
    parser.add_argument(
        "--fillfactor", type=int, help="ALTER TABLE audit_stream_sinkmessage SET (fillfactor)"
    )
    parser.add_argument("--explain", action="store_true", help="EXPLAIN a batch's statements, then stop")
    args = parser.parse_args(argv)
    _setup(args.database_url)
    if args.fillfactor:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE audit_stream_sinkmessage SET (fillfactor = {int(args.fillfactor)})")
    if args.explain:
        explain(2000)
        return

    import aio_pika
    import nats
    import redis

    tag = uuid.uuid4().hex[:8]
    stream, prefix, exchange = f"BENCH{tag}", f"bench{tag}", f"bench{tag}"
    results = []
    runs = [
        (target, mode)
        for _ in range(args.rounds)
        for target in args.targets.split(",")
        for mode in (args.modes.split(",") if target != "webhook" else ["-"])
    ]
    try:
        for target, mode in runs:
            if target == "nats":
                options = {"stream": stream, "subject_prefix": prefix}
                results.append(bench_sink("nats", "nats://127.0.0.1:4222", options, args.messages, mode))
            elif target == "redis":
                options = {"stream_prefix": prefix}
                results.append(bench_sink("redis", "redis://127.0.0.1:6379/3", options, args.messages, mode))
            elif target == "rabbitmq":
                options = {"exchange": exchange, "queue": exchange}
                url = "amqp://guest:guest@127.0.0.1:5672/"
                results.append(bench_sink("rabbitmq", url, options, args.messages, mode))
            elif target == "webhook":
                results.append(bench_webhook(args.messages))
            results[-1]["load"] = os.getloadavg()[0]
            print(json.dumps(results[-1]), flush=True)
    finally:

        async def cleanup():
            try:
                nc = await nats.connect("nats://127.0.0.1:4222")
                await nc.jetstream().delete_stream(stream)
                await nc.close()
            except Exception:  # not created by this run
                pass
            connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
            async with connection:
                channel = await connection.channel()
                await channel.queue_delete(exchange)
                await channel.exchange_delete(exchange)

        asyncio.run(cleanup())
        client = redis.Redis.from_url("redis://127.0.0.1:6379/3")
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
    print(
        "| target | batches | messages | seconds | messages/s (wall) | worker CPU µs/msg"
        " | PostgreSQL CPU µs/msg | row updates/msg | HOT | load |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for r in results:
        updates = f"{r['row_updates_per_msg']:.2f} | {r['hot_share']:.0%}" if "hot_share" in r else "- | -"
        print(
            f"| {r['target']} | {r.get('mode', '-')} | {r['messages']:,} | {r['seconds']:.2f}"
            f" | {r['per_second']:,.0f} | {r['worker_cpu_us']:.1f} | {r['postgres_cpu_us']:.1f}"
            f" | {updates} | {r['load']:.1f} |"
        )


if __name__ == "__main__":
    main()
