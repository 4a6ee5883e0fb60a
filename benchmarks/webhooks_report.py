"""The webhook benchmark's report: tables, reading, and the BENCHMARKS.md section (benchmarks/webhooks.py)."""

from __future__ import annotations

from benchmarks.perfapp.harness import fmt, met, prose, table
from benchmarks.webhooks_deliveries import _CLAIM_INDEX, RECORD

SECTION = "## Webhook delivery (benchmarks/webhooks.py)"
COMMAND = "python -m benchmarks.webhooks"
DELIVERIES_TARGET = 500  # per second
P99_TARGET_MS = 500.0


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
