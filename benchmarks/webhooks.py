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
import bisect
import json
import os
import re
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from benchmarks.perfapp.harness import (
    EVENTS,
    ITEMS,
    ROOT,
    Children,
    configure_environment,
    count,
    execute,
    fmt,
    insert_items,
    log,
    machine_info,
    met,
    migrate,
    prose,
    read_writer,
    recreate_database,
    save_json,
    summarize_ms,
    table,
    utc_now,
    vacuum,
)
from benchmarks.sections import replace_section

SECTION = "## Webhook delivery (benchmarks/webhooks.py)"
COMMAND = "python -m benchmarks.webhooks"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/audit_stream_bench_webhooks"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
SETTINGS = {"WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8"]}
MESSAGES = "audit_stream_webhookmessage"
ATTEMPTS = "audit_stream_webhookattempt"
STREAM_TABLES = [
    ITEMS,
    EVENTS,
    "audit_stream_change",
    "audit_stream_checkpoint",
    "audit_stream_context",
    "audit_stream_foldrun",
    MESSAGES,
    ATTEMPTS,
    "audit_stream_webhookendpoint",
]
DELIVERIES_TARGET = 500  # per second
TASK_FAILED = "raised unexpected"  # Celery's log line for a task that raised
SLOW_FOLD_START = 0.1  # seconds from commit to fold start worth explaining
SLOW_DELIVERY = 0.2  # seconds from fold start to receipt worth explaining
# Steps of deliver(), timed in the calling thread.
CLAIM = "claiming (`_claim`: UPDATE ... SKIP LOCKED, then SELECT the bodies)"
RECORD = "recording the outcomes (`_record`)"
REST = "sending (HTTP, signing, URL check) and the loop"
P99_TARGET_MS = 500.0


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


# --------------------------------------------------------------------------- receipts


class Receipts:
    """What the receiver recorded: one tuple per request, in arrival order."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def all(self) -> list[tuple[float, str, str, str, str, str]]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            arrival, path, webhook_id, event_table, object_id, event_id = line.split("\t")[:6]
            rows.append((float(arrival), path, webhook_id, event_table, object_id, event_id))
        return rows

    def count(self) -> int:
        if not self.path.exists():
            return 0
        with self.path.open("rb") as f:
            return sum(1 for _ in f)

    def since(self, offset: int) -> list[tuple[float, str, str, str, str, str]]:
        return self.all()[offset:]


def flush_redis(url: str) -> None:
    """Forget queued tasks and pending-task keys of earlier runs."""
    import redis

    redis.Redis.from_url(url).flushdb()


def reset(redis_url: str) -> None:
    """Empty every table the stream and the webhooks touch; only with no worker running."""
    execute(f"TRUNCATE {', '.join(STREAM_TABLES)} RESTART IDENTITY CASCADE")
    vacuum(*STREAM_TABLES)
    flush_redis(redis_url)


def make_messages(
    args: argparse.Namespace,
    port: int,
    endpoints: int,
    messages: int,
    ordered: bool = False,
    one_object: bool = False,
) -> list:
    """A fresh database with ``endpoints`` endpoints and ``messages`` real messages, split evenly.

    ``one_object``: every message is a change of one row (inserted, then updated again and again).
    """
    from audit_stream.stream.fold import fold_all
    from audit_stream.webhooks.models import WebhookEndpoint

    reset(args.redis_url)
    created = [
        WebhookEndpoint.objects.create(url=f"http://127.0.0.1:{port}/e{i}", ordered=ordered)
        for i in range(endpoints)
    ]
    rows = messages // endpoints
    if one_object:
        insert_items(1, 1)
        execute(
            f"DO $$ BEGIN FOR i IN 1..{rows - 1} LOOP UPDATE {ITEMS} SET stock = stock + 1; END LOOP; END $$"
        )
    else:
        insert_items(rows, 5_000)
    folded = sum(r.folded for r in fold_all(max_seconds=600))
    pending = count(MESSAGES, "status = 'pending'")
    if folded != rows or pending != messages:
        raise RuntimeError(f"set-up: {folded} folded, {pending} pending messages; expected {messages}")
    vacuum(MESSAGES, ATTEMPTS)
    return created


def out_of_order(receipts: list[tuple]) -> int:
    """Deliveries that arrived after a later change of their object (2xx answers, arrival order)."""
    last: dict[str, int] = {}
    late = 0
    for _, _, _, _, object_id, event_id in receipts:
        if int(event_id) < last.get(object_id, -1):
            late += 1
        last[object_id] = max(int(event_id), last.get(object_id, -1))
    return late


def ordering_run(args: argparse.Namespace, port: int, receipts: Receipts) -> list[dict]:
    """Ordered against unordered, the messages spread over many objects or all one object's."""
    runs = []
    for one_object in (False, True):
        for ordered in (False, True):
            r = deliver_in_process(
                args, port, receipts, args.messages, ordered=ordered, one_object=one_object
            )
            r["load"] = os.getloadavg()[0]
            runs.append(r)
            print(json.dumps({k: r[k] for k in ("ordered", "one_object", "per_s", "cpu_us_per_message")}))
    return runs


def ordering_table(runs: list[dict]) -> str:
    rows = []
    for r in runs:
        statements = r["statements_per_message"]
        rows.append([
            "one object" if r["one_object"] else f"{r['messages']:,} objects",
            "ordered" if r["ordered"] else "unordered",
            f"{r['messages']:,}", f"{r['seconds']:.1f}", f"**{r['per_s']:,.0f}**",
            f"{r['cpu_us_per_message']:,.0f}", f"{r['claims']:,}",
            f"{statements.get('(transactions)', 0):.2f}", str(r["check"]["out_of_order"]), f"{r['load']:.1f}",
        ])  # fmt: skip
    headers = ["messages of", "endpoint", "messages", "seconds", "deliveries/s (wall)", "CPU µs/msg",
               "claims", "transactions/msg", "out of order", "load"]  # fmt: skip
    return table(headers, rows, right={2, 3, 4, 5, 6, 7, 8, 9})


def verify_delivered(receipts: list[tuple], expected: int) -> dict:
    """At least once: every message's webhook-id arrived, nothing else did, every message is delivered."""
    from audit_stream.webhooks.models import WebhookMessage

    ids = {m.webhook_id for m in WebhookMessage.objects.only("id")}
    received = Counter(r[2] for r in receipts)
    statuses = dict(Counter(WebhookMessage.objects.values_list("status", flat=True)))
    attempts = count(ATTEMPTS)
    problems = []
    if len(ids) != expected:
        problems.append(f"{len(ids)} messages in the database, expected {expected}")
    if set(received) != ids:
        problems.append(
            f"{len(ids - set(received))} messages never received, {len(set(received) - ids)} unknown ids"
        )
    if statuses != {"delivered": expected}:
        problems.append(f"message statuses {statuses}")
    if problems:
        raise RuntimeError("delivery check failed: " + "; ".join(problems))
    return {
        "messages": expected,
        "received": len(receipts),
        "distinct": len(received),
        "duplicates": len(receipts) - len(received),
        "attempts": attempts,
    }


def verify_signatures(samples: Path, secrets: dict[str, str]) -> int:
    """Verify the receiver's full samples with ``standardwebhooks``; returns how many were verified."""
    from standardwebhooks.webhooks import Webhook

    verified = 0
    for line in samples.read_text().splitlines():
        sample = json.loads(line)
        payload = Webhook(secrets[sample["path"]]).verify(sample["body"], sample["headers"])
        if payload["data"]["model"] != "perfapp.item" or payload["data"]["event_table"] != EVENTS:
            raise RuntimeError(f"unexpected payload {payload}")
        verified += 1
    if not verified:
        raise RuntimeError("the receiver kept no sample to verify")
    return verified


# --------------------------------------------------------------------------- 1. deliveries/s


class Timers:
    """Wrap module functions to time each call (patched back on exit).

    Calls are kept per thread: those made in the calling thread add up to its
    wall time; those made in worker threads (parallel sends) overlap.
    """

    def __init__(self, targets: list[tuple[object, str, str]]) -> None:
        self.targets = targets
        self.calls: dict[str, list[tuple[float, bool]]] = {}  # (seconds, in the calling thread)
        self._originals: list[tuple[object, str, object]] = []
        self._thread = threading.get_ident()

    def __enter__(self) -> Timers:
        for module, attribute, name in self.targets:
            original = getattr(module, attribute)
            self._originals.append((module, attribute, original))
            setattr(module, attribute, self._wrap(original, name))
        return self

    def __exit__(self, *exc) -> None:
        for module, attribute, original in self._originals:
            setattr(module, attribute, original)

    def _wrap(self, function, name: str):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                self.calls.setdefault(name, []).append((spent, threading.get_ident() == self._thread))

        return timed

    def wall(self, name: str) -> float | None:
        """Seconds spent in ``name``, if every call was made in the calling thread."""
        calls = self.calls.get(name, [])
        return sum(s for s, _ in calls) if calls and all(main for _, main in calls) else None

    def mean(self, name: str) -> float | None:
        calls = self.calls.get(name, [])
        return sum(s for s, _ in calls) / len(calls) if calls else None


# An index in the claim's order, tried in a rolled-back transaction (what-if, not installed).
_CLAIM_INDEX = (
    "CREATE INDEX bench_claim_order ON audit_stream_webhookmessage (endpoint_id, created_at, id)"
    " WHERE status IN ('pending', 'sending')"
)


def _explain(sql: str, params: dict, before: str | None = None) -> dict:
    """EXPLAIN ANALYZE ``sql`` in a transaction that is rolled back (after ``before``, if given)."""
    from django.db import transaction

    with transaction.atomic():
        if before:
            execute(before)
            execute("ANALYZE audit_stream_webhookmessage")
        plan = execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)[0][0]
        transaction.set_rollback(True)
    explained = plan[0] if isinstance(plan, list) else json.loads(plan)[0]
    nodes, stack = [], [explained["Plan"]]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("Plans", []))
    scans = [n for n in nodes if "Scan" in n["Node Type"] and n.get("Relation Name") == MESSAGES]
    widest = max(scans, key=lambda n: n["Actual Rows"] * n.get("Actual Loops", 1), default=None)
    return {
        "execution_ms": explained["Execution Time"],
        "widest_scan": widest["Node Type"] if widest else None,
        "rows_read": widest["Actual Rows"] * widest.get("Actual Loops", 1) if widest else None,
        "sorted": any(n["Node Type"] == "Sort" for n in nodes),
    }


def explain_claim(endpoint_id: int) -> dict | None:
    """EXPLAIN ANALYZE one claim with every message due, as is and with an index in its order.

    Both rolled back. Uses ``delivery._CLAIM_SQL`` (private: a change there only skips this).
    """
    from datetime import timedelta

    from audit_stream.webhooks import delivery

    limit = getattr(delivery, "_CLAIM", 50)
    due = count(MESSAGES, "endpoint_id = %s AND status = 'pending'", [endpoint_id])
    params = {"lease": timedelta(seconds=60), "subscriber": endpoint_id, "limit": limit}
    try:
        plan = _explain(delivery._LOCK_SQL, params)
        indexed = _explain(delivery._LOCK_SQL, params, before=_CLAIM_INDEX)
    except Exception as exc:  # the claim's internals changed: report without it
        log(f"EXPLAIN of the claim skipped: {type(exc).__name__}: {exc}")
        return None
    return {"due": due, "limit": limit, **plan, "with_index": indexed}


class HttpxPool:
    """The HTTP client webhook delivery used before ``audit_stream.webhooks.transport`` (``httpx``,
    kept-alive connections), behind the same interface: the benchmark's "before" side."""

    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        import httpx

        timeout = httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout)
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        self._client = httpx.Client(timeout=timeout, limits=limits, follow_redirects=False, trust_env=False)

    def post(self, scheme, address, port, host, path, body, headers):
        from audit_stream.webhooks import transport

        extensions = {"sni_hostname": host} if scheme == "https" else {}
        try:
            r = self._client.post(f"{scheme}://{address}:{port}{path}", content=body, headers=headers,
                                  extensions=extensions)  # fmt: skip
        except Exception as exc:
            raise transport.TransportError(f"{type(exc).__name__}: {exc}") from exc
        return transport.Response(r.status_code, dict(r.headers), r.content)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._client.close()


def deliver_in_process(
    args: argparse.Namespace,
    port: int,
    receipts: Receipts,
    messages: int,
    synchronous_commit: str = "on",
    samples: Path | None = None,
    ordered: bool = False,
    client: str = "http.client",
    one_object: bool = False,
) -> dict:
    """``deliver()`` in this process for one endpoint with ``messages`` due; split by step.

    ``synchronous_commit="off"`` (for this session only) is a diagnosis: how much
    of the time is waiting for the WAL flush of each commit. ``ordered``: the
    endpoint is ordered per object (every message is a different object's).
    ``client="httpx"``: the HTTP client used before (:class:`HttpxPool`).
    """
    import resource

    from django.db import connection

    from audit_stream.webhooks import delivery, safety, signing, transport

    (endpoint,) = make_messages(args, port, 1, messages, ordered=ordered, one_object=one_object)
    offset = receipts.count()
    log(
        f"in-process deliver() of {messages:,} messages, 1 endpoint, synchronous_commit {synchronous_commit}"
        f"{', ordered' if ordered else ''}{', one object' if one_object else ''}, client {client}"
    )
    targets = [
        (delivery, "_claim", CLAIM),
        (delivery, "_record", RECORD),
        (delivery, "_send", "send"),
        (safety, "resolve", "resolve"),
        (signing, "headers", "sign"),
    ]
    statements: Counter = Counter()

    def count_statements(execute_, sql, params, many, context):
        statements[sql.split(None, 1)[0].upper()] += 1
        return execute_(sql, params, many, context)

    commit = connection.commit

    def count_commits():
        statements["(transactions)"] += 1
        return commit()

    claim_plan = explain_claim(endpoint.pk)
    execute("SET synchronous_commit = " + {"on": "on", "off": "off"}[synchronous_commit])
    connection.commit = count_commits  # the commits of atomic blocks
    pool_class = transport.Pool
    if client == "httpx":
        transport.Pool = HttpxPool
    try:
        with Timers(targets) as timers, connection.execute_wrapper(count_statements):
            cpu = resource.getrusage(resource.RUSAGE_SELF)
            started = time.perf_counter()
            result = delivery.deliver(endpoint.pk, max_messages=10**9, max_seconds=600)
            seconds = time.perf_counter() - started
            used = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        transport.Pool = pool_class
        del connection.commit
        execute("RESET synchronous_commit")
    cpu_s = (used.ru_utime - cpu.ru_utime) + (used.ru_stime - cpu.ru_stime)
    if result.delivered != messages or result.failed:
        raise RuntimeError(f"deliver(): {result}")
    arrived = receipts.since(offset)
    check = verify_delivered(arrived, messages)
    check["out_of_order"] = out_of_order(arrived)
    verified = verify_signatures(samples, {"/e0": endpoint.secret}) if samples else 0
    steps = {name: timers.wall(name) for name in (CLAIM, RECORD) if timers.wall(name) is not None}
    steps[REST] = seconds - sum(steps.values())
    per_request = {  # each request in its own thread if sends are parallel: these overlap
        "one request (URL check, signing, POST to the 204)": timers.mean("send"),
        "of which the URL check (getaddrinfo)": timers.mean("resolve"),
        "of which signing (HMAC-SHA256)": timers.mean("sign"),
    }
    sends = timers.calls.get("send", [])
    claims = [spent for spent, _ in timers.calls.get(CLAIM, [])]
    tenth = max(1, len(claims) // 10)
    rate = messages / seconds
    log(f"  {rate:,.0f} deliveries/s")
    return {
        "endpoints": 1,
        "messages": messages,
        "ordered": ordered,
        "one_object": one_object,
        "client": client,
        "cpu_us_per_message": cpu_s * 1e6 / messages,
        "synchronous_commit": synchronous_commit,
        "seconds": seconds,
        "per_s": rate,
        "steps_s": steps,
        "per_request_s": per_request,
        "parallel_sends": bool(sends) and not all(main for _, main in sends),
        "statements_per_message": {k: v / messages for k, v in statements.most_common()},
        "claims": len(claims),
        "claim_ms_first_tenth": sum(claims[:tenth]) * 1000 / tenth,
        "claim_ms_last_tenth": sum(claims[-tenth:]) * 1000 / tenth,
        "claim_plan": claim_plan,
        "check": check,
        "signatures_verified": verified,
    }


def deliver_with_celery(
    args: argparse.Namespace, port: int, endpoints: int, children: Children, receipts: Receipts
) -> dict:
    """Enqueue ``audit_stream.deliver`` per endpoint for a real worker; time to the last message received."""
    from audit_stream.stream import pending
    from worker.celery import app

    created = make_messages(args, port, endpoints, args.messages)
    worker = children.worker(args.concurrency, SETTINGS)
    log(f"Celery (-c {args.concurrency}): {args.messages:,} messages to {endpoints} endpoint(s)")
    try:
        offset = receipts.count()
        started = time.time()
        for endpoint in created:
            if pending.claim("audit_stream.deliver", endpoint.pk):
                app.send_task("audit_stream.deliver", args=[endpoint.pk])
        deadline = time.monotonic() + 600
        while (delivered := count(MESSAGES, "status = 'delivered'")) < args.messages:
            worker.check(TASK_FAILED)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{delivered:,} of {args.messages:,} delivered after 600 s")
            time.sleep(0.1)
        time.sleep(0.2)  # the receiver's lines of the last requests
        got = receipts.since(offset)
        log_text = worker.output()
    finally:
        children.stop(worker)
    check = verify_delivered(got, args.messages)
    seconds = max(r[0] for r in got) - started
    per_endpoint = {}
    for path in sorted({r[1] for r in got}):
        arrivals = [r[0] for r in got if r[1] == path]
        per_endpoint[path] = {"messages": len(arrivals), "done_s": max(arrivals) - started}
    tasks = [int(n) for n in re.findall(r"endpoint \d+: (\d+) delivered", log_text)]
    rate = args.messages / seconds
    log(f"  {rate:,.0f} deliveries/s")
    return {
        "endpoints": endpoints,
        "concurrency": args.concurrency,
        "messages": args.messages,
        "seconds": seconds,
        "per_s": rate,
        "first_received_s": min(r[0] for r in got) - started,
        "per_endpoint": per_endpoint,
        "deliver_tasks": len(tasks),
        "check": check,
    }


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


# --------------------------------------------------------------------------- report


def throughput_table(results: dict) -> str:
    rows = []
    notes = {
        "in_process": "—",
        "in_process_httpx": "before: the former HTTP client (`httpx`), same code otherwise",
        "in_process_ordered": "endpoint `ordered` (every message a different object)",
        "in_process_async_commit": "diagnosis: `SET synchronous_commit = off` for the session",
    }
    for key, note in notes.items():
        r = results.get(key)
        if r is None:
            continue
        cpu = r.get("cpu_us_per_message")
        note = note + (f"; this process's CPU {cpu:,.0f} µs per message" if cpu else "")
        row = ["`deliver()` in-process", "1", f"{r['messages']:,}", f"{r['seconds']:.1f}"]
        rows.append([*row, f"**{r['per_s']:,.0f}**", str(r["check"]["duplicates"]), note])
    for r in results["celery"]:
        done = ", ".join(f"{v['done_s']:.1f}" for v in r["per_endpoint"].values())
        row = [f"Celery worker `-c {r['concurrency']}`", str(r["endpoints"]), f"{r['messages']:,}"]
        row += [f"{r['seconds']:.1f}", f"**{r['per_s']:,.0f}**", str(r["check"]["duplicates"])]
        rows.append([*row, f"{r['deliver_tasks']} tasks; endpoints done at {done} s"])
    headers = ["delivered by", "endpoints", "messages", "seconds", "deliveries/s", "duplicates", "notes"]
    return table(headers, rows, right={1, 2, 3, 4, 5})


def steps_table(results: dict) -> str:
    on, off = results["in_process"], results["in_process_async_commit"]
    rows = []
    for name, seconds in on["steps_s"].items():
        per_message = seconds * 1e6 / on["messages"]
        row = [name, f"{seconds:.2f}", f"{seconds / on['seconds']:.0%}", f"{per_message:,.0f}"]
        other = off["steps_s"].get(name)
        rows.append([*row, fmt(other * 1e6 / off["messages"] if other is not None else None)])
    total = [f"{on['seconds']:.2f}", "100%", f"{on['seconds'] * 1e6 / on['messages']:,.0f}"]
    rows.append(["total", *total, f"{off['seconds'] * 1e6 / off['messages']:,.0f}"])
    headers = ["step of `deliver()`", "seconds", "share", "µs per message", "µs, synchronous_commit off"]
    return table(headers, rows)


def requests_line(results: dict) -> str:
    r = results["in_process"]
    parts = [f"{name} {seconds * 1e6:,.0f} µs" for name, seconds in r["per_request_s"].items() if seconds]
    where = "in parallel threads, overlapping" if r["parallel_sends"] else "one after the other"
    return f"Per request ({where}): " + ", ".join(parts) + "."


def statements_line(results: dict) -> str:
    r = results["in_process"]
    counts = dict(r["statements_per_message"])
    transactions = counts.pop("(transactions)", 0.0)
    text = (
        "SQL statements per delivered message on the benchmark's connection: "
        + ", ".join(f"{n:.2f} {kind}" for kind, n in counts.items())
        + f" ({sum(counts.values()):.2f} in all), in {transactions:.2f} explicit transactions."
        f" A claim took {r['claim_ms_first_tenth']:.1f} ms on average in the first tenth of the"
        f" {r['claims']:,} claims and {r['claim_ms_last_tenth']:.1f} ms in the last."
    )
    plan = r.get("claim_plan")
    if plan:
        text += (
            f" `EXPLAIN ANALYZE` of one claim of {plan['limit']} with {plan['due']:,} messages due:"
            f" {plan['execution_ms']:.1f} ms, reading {plan['rows_read']:,} rows ({plan['widest_scan']})"
            + (" and sorting them" if plan["sorted"] else "")
            + f"; with an index in the claim's order (`{_CLAIM_INDEX.split(' ON ')[1]}`, created in the"
            f" same rolled-back transaction): {plan['with_index']['execution_ms']:.1f} ms, reading"
            f" {plan['with_index']['rows_read']:,} rows ({plan['with_index']['widest_scan']})."
        )
    return text


def latency_table(results: dict) -> str:
    rows = []
    for r in results["latency"]:
        s = r["latency"]
        rows.append(
            [
                f"{r['rate']}",
                f"{r['achieved']:.0f}",
                f"{r['rows']:,}",
                f"{s['p50']:.0f}",
                f"{s['p95']:.0f}",
                f"**{s['p99']:.0f}**",
                f"{s['max']:.0f}",
                str(r["duplicates"]),
                str(r["fold_tasks"]),
                str(r["deliver_tasks"]),
            ]
        )
    headers = [
        "tx/s asked",
        "achieved",
        "rows",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "duplicates",
        "fold tasks",
        "deliver tasks",
    ]
    return table(headers, rows)


def keeping_up_table(results: dict) -> str:
    rows = [
        [
            f"{r['rate']}",
            f"{r['first_quarter']['p50']:.0f}",
            f"{r['last_quarter']['p50']:.0f}",
            f"{r['last_quarter']['p99']:.0f}",
            str(r["backlog_max"]),
            str(r["backlog_at_end"]),
            f"{r['drain_s']:.2f}",
        ]
        for r in results["latency"]
    ]
    headers = [
        "tx/s",
        "p50 ms, first quarter",
        "p50 ms, last quarter",
        "p99 ms, last quarter",
        "max backlog",
        "backlog when the writer stopped",
        "last receipt after last commit, s",
    ]
    return table(headers, rows)


def tasks_table(results: dict) -> str:
    rows = []
    for r in results["latency"]:
        t, slow, post = r["tasks"], r["slow_fold_start"], r["slow_delivery"]
        fold, deliver = t.get("fold", {"count": 0, "run": {}}), t.get("deliver", {"count": 0, "run": {}})
        share = slow["all_delivering_s"] / slow["waited_s"] if slow["waited_s"] else 0.0
        rows.append(
            [
                f"{r['rate']}",
                f"{fold['count']} / {fmt(fold['run'].get('p50'))} / {fmt(fold['run'].get('max'))}",
                f"{deliver['count']} / {fmt(deliver['run'].get('p50'))} / {fmt(deliver['run'].get('max'))}",
                f"{t['all_delivering_s']:.1f}",
                f"{slow['rows']:,} of {r['rows']:,}",
                f"{share:.0%}",
                f"{post['rows']:,} of {r['rows']:,}",
                f"{post['no_deliver_task_s'] / post['waited_s']:.0%}" if post["waited_s"] else "—",
            ]
        )
    headers = [
        "tx/s",
        "fold tasks / run ms p50 / max",
        "deliver tasks / run ms p50 / max",
        "s with every process delivering",
        "rows whose fold started > 100 ms after commit",
        "of their wait, every process delivering",
        "rows received > 200 ms after their fold started",
        "of their wait, no deliver task running",
    ]
    return table(headers, rows)


def parts_table(results: dict) -> str:
    rows = []
    for r in results["latency"]:
        for name, s in r["parts"].items():
            rows.append(
                [
                    f"{r['rate']}",
                    name,
                    f"{s['p50']:.0f}",
                    f"{s['p95']:.0f}",
                    f"{s['p99']:.0f}",
                    f"{s['max']:.0f}",
                ]
            )
    return table(["tx/s", "part", "p50 ms", "p95 ms", "p99 ms", "max ms"], rows, right={0, 2, 3, 4, 5})


def record_reading(on: dict, off: dict) -> str:
    """What ``synchronous_commit = off`` says about the cost of recording outcomes."""
    if RECORD not in on["steps_s"] or RECORD not in off["steps_s"]:
        return ""
    with_flush = on["steps_s"][RECORD] * 1e6 / on["messages"]
    without = off["steps_s"][RECORD] * 1e6 / off["messages"]
    text = (
        f"Recording outcomes takes {with_flush:,.0f} µs per message, and {without:,.0f} µs with"
        " `synchronous_commit = off` for the session"
    )
    if without < 0.9 * with_flush:
        text += f": the WAL flush of its commits is {1 - without / with_flush:.0%} of it"
    else:
        text += ": the WAL flush is not where its time goes"
    return text + f"; `deliver()` reaches {off['per_s']:,.0f}/s without the flush."


def utilisation_reading(lat: list[dict], inproc: dict) -> str:
    """How busy the delivery path was at each write rate, against what deliver() sustained alone."""
    loads = " and ".join(f"{r['rate'] / inproc['per_s']:.0%}" for r in lat)
    return (
        " One endpoint gets one message per row, so the worker must deliver "
        + " and ".join(f"{r['rate']}/s" for r in lat)
        + f": {loads} of what `deliver()` sustained alone in this run ({inproc['per_s']:,.0f}/s),"
        " while the same worker also folds and the writer and PostgreSQL share the 2 cores; a queue"
        " served that close to its capacity waits long."
    )


def unscheduled_reading(lat: list[dict]) -> str:
    """Whether messages waited with no deliver task running (deliveries not enqueued yet)."""
    parts = []
    for r in lat:
        post = r["slow_delivery"]
        if post["rows"] < max(5, 0.01 * r["rows"]) or post["no_deliver_task_s"] < 0.3 * post["waited_s"]:
            continue
        fold = r["tasks"].get("fold", {}).get("run", {})
        parts.append(
            f"at {r['rate']} tx/s, {post['rows']:,} rows were received more than 200 ms after their fold"
            f" started, and for {post['no_deliver_task_s'] / post['waited_s']:.0%} of that wait no deliver"
            f" task was running (fold tasks ran up to {fold.get('max', 0) / 1000:.1f} s)"
        )
    if not parts:
        return ""
    return (
        " Messages also wait for a delivery to be enqueued: "
        + "; ".join(parts)
        + ". The fold task enqueues `audit_stream.deliver` only when `fold()` returns, and under steady"
        " writes `fold()` keeps folding batch after batch until it finds nothing new; until it returns,"
        " the messages it recorded are picked up only by a deliver task still running or by the"
        " listener's poll (every `POLL_INTERVAL`, 1 s)."
    )


def starvation_reading(lat: list[dict]) -> str:
    """Whether folds started late because every worker process was delivering."""
    parts = []
    for r in lat:
        slow = r["slow_fold_start"]
        if slow["rows"] < max(5, 0.01 * r["rows"]) or slow["all_delivering_s"] < 0.3 * slow["waited_s"]:
            continue
        parts.append(
            f"at {r['rate']} tx/s, {slow['rows']:,} rows waited more than 100 ms for their fold, and every"
            f" process was running a deliver task for {slow['all_delivering_s'] / slow['waited_s']:.0%} of"
            f" that wait ({r['tasks']['all_delivering_s']:.1f} s of the run)"
        )
    if not parts:
        return ""
    return (
        " Folds start late because deliveries hold every worker process: "
        + "; ".join(parts)
        + ". A deliver task releases its pending key when it starts, then delivers until nothing is"
        " due, so under steady writes the next fold enqueues a second deliver task for the same"
        " endpoint, which takes the other process; a fold task enqueued then waits in Redis until one"
        " of them finishes. Fold and deliver tasks share one queue and one pool."
    )


def reading(results: dict) -> str:
    inproc, off = results["in_process"], results["in_process_async_commit"]
    celery = results["celery"]
    steps = sorted(inproc["steps_s"].items(), key=lambda kv: -kv[1])
    best = max([inproc["per_s"]] + [r["per_s"] for r in celery])
    text = (
        f"**Deliveries/s.** In-process, one endpoint: {inproc['per_s']:,.0f}/s; through the worker: "
        + ", ".join(f"{r['per_s']:,.0f}/s to {r['endpoints']} endpoint(s)" for r in celery)
        + f" (target 500/s: {met(best >= DELIVERIES_TARGET)} at best;"
        f" {met(inproc['per_s'] >= DELIVERIES_TARGET)} for one endpoint alone)."
        " Per message, `deliver()` spends "
        + ", ".join(f"{s * 1e6 / inproc['messages']:,.0f} µs in {name}" for name, s in steps[:3])
        + f" (of {inproc['seconds'] * 1e6 / inproc['messages']:,.0f} µs). "
        + record_reading(inproc, off)
    )
    plan = inproc.get("claim_plan")
    if plan and plan["sorted"] and (plan["rows_read"] or 0) >= 10 * plan["limit"]:
        text += (
            f" A claim of {plan['limit']} reads and sorts every due message of the endpoint to take"
            f" {plan['limit']} (`EXPLAIN ANALYZE` with {plan['due']:,} due: {plan['rows_read']:,} rows"
            f" read by a {plan['widest_scan']}, {plan['execution_ms']:.1f} ms; in the run"
            f" {inproc['claim_ms_first_tenth']:.1f} ms per claim in the first tenth,"
            f" {inproc['claim_ms_last_tenth']:.1f} ms in the last): `ORDER BY created_at, id` does not"
            " match the partial index `audit_stream_msg_due` (endpoint, next_attempt_at, created_at), so a"
            " claim costs at least O(due messages) and draining a backlog of N messages O(N²), slowest"
            " exactly when an endpoint comes back from an outage; an index on (endpoint_id, created_at, id)"
            f" for the due statuses takes it to {plan['with_index']['execution_ms']:.1f} ms."
        )
    lat = results["latency"]
    ok = all(r["latency"]["p99"] < P99_TARGET_MS for r in lat)
    text += (
        " **Latency.** Commit to receipt: "
        + "; ".join(
            f"p50 {r['latency']['p50']:.0f} ms, p99 {r['latency']['p99']:.0f} ms at {r['rate']} tx/s"
            for r in lat
        )
        + f" ({met(ok)}: target p99 < 500 ms). The p99 of each part: "
        + "; ".join(
            f"at {r['rate']} tx/s " + ", ".join(f"{name} {s['p99']:.0f} ms" for name, s in r["parts"].items())
            for r in lat
        )
        + "."
    )
    if not ok:
        text += utilisation_reading(lat, inproc)
    text += starvation_reading(lat) + unscheduled_reading(lat)
    behind = [r for r in lat if r["last_quarter"]["p50"] > 2 * r["first_quarter"]["p50"] + 100]
    if behind:
        text += (
            " Delivery fell behind at "
            + ", ".join(
                f"{r['rate']} tx/s (p50 {r['first_quarter']['p50']:.0f} ms in the first quarter of the run,"
                f" {r['last_quarter']['p50']:.0f} ms in the last; {r['backlog_at_end']} messages still owed"
                f" when the writer stopped)"
                for r in behind
            )
            + ": the latency there is queueing, set by the delivery rate the worker sustains while it"
            " also folds, next to the writer and PostgreSQL on 2 cores."
        )
    return text


def markdown(results: dict) -> str:
    a, m = results["args"], results["machine"]
    blocks = [
        SECTION,
        f"Measured {results['date']} with `{COMMAND}` ({results['total_seconds'] / 60:.1f} min).",
        prose(
            f"""Machine: {m["nproc"]} cores, shared by every process (PostgreSQL, Redis, the worker, the
            listener, the receiver, the writer); PostgreSQL {m["postgresql"]} (shared_buffers
            {m["shared_buffers"]}, synchronous_commit {m["synchronous_commit"]}); Python {m["python"]},
            Django {m["django"]}, Celery {m["celery"]}; audit_stream at `{m["git"]}`
            (sources sha1 `{m["audit_stream_sha1"]}`); load average at start
            {m["load_at_start"][0]:.1f}, at the end {results["load_at_end"][0]:.1f}."""
        ),
        prose(
            """Method: a dedicated database (`audit_stream_bench_webhooks`, recreated and migrated at start;
            the stream and webhook tables truncated before each run) and Redis DB 13 (flushed before each
            run); every process has `AUDIT_STREAM = {"WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8"]}`. The
            receiver is a separate process on loopback (`python -m benchmarks.perfapp.receiver`: threaded
            `http.server`, HTTP/1.1 keep-alive, a listen backlog of 1,024, answers 204) that records each
            request's arrival time, `webhook-id` and `data.object_id`. Messages are real: `perfapp.Item`
            rows (`@audit_stream.track()`) inserted with `bulk_create` and folded in-process, which records
            one message per change and active endpoint. Every run checks at-least-once delivery: every
            message's `webhook-id` reached the receiver and nothing else did, every message is `delivered`;
            duplicates are counted. The first 20 requests' signatures are verified with `standardwebhooks`."""
        ),
        "### Deliveries per second",
        prose(
            f"""{a["messages"]:,} messages, delivered by `deliver(endpoint, max_messages=10**9,
            max_seconds=600)` in the benchmark's process (one endpoint), or by a real worker (`celery -A
            worker worker -c {a["concurrency"]}`) after `audit_stream.deliver` is enqueued once per endpoint
            (4 endpoints, {a["messages"] // 4:,} messages each; a task delivers up to 1,000 messages or 20 s,
            then enqueues itself again), timed from the enqueue to the last request's arrival."""
        ),
        throughput_table(results),
        prose(
            """Where the in-process `deliver()` spends its wall time: `delivery._claim` and
            `delivery._record` wrapped with a timer, the rest is sending and the loop; then the time of
            one request (`delivery._send`, with `safety.resolve` and `signing.headers` in it), and the
            SQL sent on the benchmark's connection (an execute wrapper, and `connection.commit`
            counted). The claim is also run once under `EXPLAIN ANALYZE` (rolled back) with every
            message due:"""
        ),
        steps_table(results),
        requests_line(results),
        statements_line(results),
        "### Commit-to-receipt latency",
        prose(
            f"""One endpoint; the listener (`python -m worker.listen`, NOTIFY on, poll 1 s) and the worker
            (`-c {a["concurrency"]}`) running. A writer (`python -m benchmarks.perfapp.writer`) inserts one
            row per autocommit transaction at a steady rate for {a["latency_seconds"]:.0f} s; the commit
            time is `clock_timestamp()` returned by the committing `INSERT` (same machine clock as the
            receiver's `time.time()`). Latency is from it to the arrival of the message whose
            `data.object_id` is the row's pk. Fold and deliver tasks are counted from the worker's log."""
        ),
        latency_table(results),
        prose(
            """The same latency in two parts: commit to `Change.folded_at` (`now()` of the fold batch's
            transaction, i.e. its start: the wake-up and any wait for a worker process), and from there to
            the arrival at the receiver (the fold batch and its commit, enqueueing `audit_stream.deliver`,
            a worker picking it up, claiming, the messages ahead, the request). Percentiles are of each part
            on its own, so they do not add up."""
        ),
        parts_table(results),
        prose(
            """Did delivery keep up? Latency of the first and last quarter of the rows (by commit time),
            and the backlog: rows committed whose message had not arrived yet, at each commit."""
        ),
        keeping_up_table(results),
        prose(
            f"""The worker's tasks during each run, from its log (`-l info`, each task's end and run
            time): how many ran and how long; how long every worker process (`-c {a["concurrency"]}`) was
            running a deliver task at once (a fold task enqueued then waits in Redis); for the rows whose fold
            started more than 100 ms after their commit, how much of that wait fell in such periods; and
            for the rows received more than 200 ms after their fold started, how much of that wait passed
            with no deliver task running at all (messages due, but no delivery enqueued yet)."""
        ),
        tasks_table(results),
        "### Reading",
        reading(results),
    ]
    if results.get("diagnosis"):
        blocks.append(results["diagnosis"])
    return "\n\n".join(blocks) + "\n"


def print_tables(results: dict) -> None:
    print("\nDeliveries per second\n\n" + throughput_table(results))
    print("\nIn-process deliver(), by step\n\n" + steps_table(results))
    print("\n" + requests_line(results) + "\n\n" + statements_line(results))
    print("\nCommit-to-receipt latency\n\n" + latency_table(results))
    print("\nLatency in parts\n\n" + parts_table(results))
    print("\nKeeping up\n\n" + keeping_up_table(results))
    print("\nWorker tasks\n\n" + tasks_table(results))
    print("\n" + reading(results))


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
