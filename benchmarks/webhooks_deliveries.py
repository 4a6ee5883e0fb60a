"""The webhook benchmark's first measurement: deliveries per second (benchmarks/webhooks.py).

``deliver()`` in-process for one endpoint, its time split by step (and with the
former HTTP client, an ordered endpoint, ``synchronous_commit = off``); then
through a real Celery worker for several endpoints.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from collections import Counter
from pathlib import Path

from benchmarks.perfapp.harness import Children, count, execute, log
from benchmarks.webhooks_messages import (
    MESSAGES,
    SETTINGS,
    Receipts,
    make_messages,
    out_of_order,
    verify_delivered,
    verify_signatures,
)

TASK_FAILED = "raised unexpected"  # Celery's log line for a task that raised
# Steps of deliver(), timed in the calling thread.
CLAIM = "claiming (`_claim`: UPDATE ... SKIP LOCKED, then SELECT the bodies)"
RECORD = "recording the outcomes (`_record`)"
REST = "sending (HTTP, signing, URL check) and the loop"


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
    params = {"lease": timedelta(seconds=60), "subscriber": endpoint_id, "limit": limit, "floor": None}
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
