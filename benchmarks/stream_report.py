"""The stream benchmark's report: tables, reading, and the BENCHMARKS.md section (benchmarks/stream.py).

The reading is generated from the numbers, so it stays true on a rerun;
``python -m benchmarks.stream --render <json>`` rewrites the section from a saved result.
"""

from __future__ import annotations

import json

from benchmarks.sections import replace_section
from benchmarks.stream_database import COMMAND, ROOT, log
from benchmarks.stream_observers import MAX_OTHER_LOAD

SECTION = "## Stream (benchmarks/stream.py)"
FOLD_TARGET = 10_000  # events/s


# --------------------------------------------------------------------------- report


def _n(value, spec: str = ",.0f") -> str:
    return "—" if value is None else format(value, spec)


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def fold_table(results: dict) -> str:
    """Markdown: events/s per backlog and path."""
    lines = [
        "| backlog | path | batch size | events | seconds | events/s | ms per batch | other load"
        " | target ≥ 10,000/s |",
        "|---|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in results["in_process"]["runs"]:
        lines.append(
            f"| {r['events']:,} {r['backlog']} | `fold()` in-process | {r['batch_size']:,} | {r['events']:,}"
            f" | {r['seconds']:.2f} | {r['events_per_s']:,.0f} | {r['ms_per_batch']:.0f}"
            f" | {r['other_load']:.0%}"
            f" | {_met(r['events_per_s'] >= FOLD_TARGET)} |"
        )
    for r in results["celery"]:
        lines.append(
            f"| {r['events']:,}-event burst | worker `-c {r['concurrency']}` + listener | 5,000 (default)"
            f" | {r['events']:,} | {r['seconds']:.2f} | {r['events_per_s']:,.0f} | — | {r['other_load']:.0%}"
            f" | {_met(r['events_per_s'] >= FOLD_TARGET)} |"
        )
    return "\n".join(lines)


def celery_notes(results: dict) -> str:
    """Markdown bullet per Celery burst run."""
    return "\n".join(
        f"- `-c {r['concurrency']}`: the burst's writes took {r['write_seconds']:.2f} s; last Change visible"
        f" {r['seconds']:.2f} s after the first commit"
        f" (its `folded_at` at {r['last_folded_at_after_first_commit']:.2f} s);"
        f" NOTIFYs: {r['notifications']}, fold tasks: {r['fold_tasks']}."
        for r in results["celery"]
    )


def _ms_and_share(ms: float, total: float) -> str:
    return f"{ms:.1f} ({ms / total:.0%})"


def explain_table(results: dict) -> str:
    """Markdown: where one 5,000-event fold batch spends its SQL time."""
    explains = {k: v for k, v in results["in_process"]["explain"].items() if v}
    if not explains:
        return "_EXPLAIN breakdown unavailable._"
    kinds = list(explains)
    lines = ["| step | " + " | ".join(f"{k} ms" for k in kinds) + " |", "|---|" + "--:|" * len(kinds)]
    for step in next(iter(explains.values()))["steps_ms"]:
        cells = [_ms_and_share(explains[k]["steps_ms"][step], explains[k]["execution_ms"]) for k in kinds]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines.append(
        "| **execution time** | " + " | ".join(f"**{explains[k]['execution_ms']:.1f}**" for k in kinds) + " |"
    )
    return "\n".join(lines)


def latency_table(results: list[dict]) -> str:
    """Markdown: latency percentiles per mode and rate."""
    lines = [
        "| mode | rate tx/s | achieved tx/s | tx | p50 ms | p95 ms | p99 ms | max ms"
        " | `folded_at` p50 / p99 ms | fold batches | fold tasks done | NOTIFYs | stream CPU s, processes"
        " + backends | other load | target p99 |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in results:
        seen, folded = r["seen"], r["folded_at"]
        lines.append(
            f"| {r['mode']} | {r['rate']:,} | {r['achieved']:,.0f} | {r['transactions']:,}"
            f" | {seen['p50']:.0f} | {seen['p95']:.0f} | {seen['p99']:.0f} | {seen['max']:.0f}"
            f" | {folded['p50']:.0f} / {folded['p99']:.0f}"
            f" | {r['fold_batches']:,} | {r['fold_tasks_finished']:,} | {r['notifications']:,}"
            f" | {r['stream_cpu_seconds']:.1f} + {r['backend_cpu_seconds']:.1f} | {r['other_load']:.0%}"
            f" | < {r['target_p99_ms']:.0f} ms: {_met(seen['p99'] < r['target_p99_ms'])} |"
        )
    return "\n".join(lines)


def steady_table(steady: dict | None) -> str:
    """Markdown: the long steady run."""
    if not steady:
        return "_Not run (`--quick`)._"
    return "\n".join(
        [
            "| rate tx/s | achieved | seconds | NOTIFY/s before 30 s | NOTIFY/s after 30 s | fold tasks done"
            " | longest fold task s |",
            "|--:|--:|--:|--:|--:|--:|--:|",
            f"| {steady['rate']:,} | {steady['achieved']:,.0f} | {steady['seconds']:.0f}"
            f" | {steady['notify_per_s_before']:.1f} | {steady['notify_per_s_after']:.1f}"
            f" | {steady['fold_tasks_finished']} | {steady['longest_task_seconds']:.1f} |",
        ]
    )


def _cpu_pair(row: dict) -> str:
    if row["stream_cpu_seconds"] is None:
        return "—"
    return f"{row['stream_cpu_seconds']:.1f} + {_n(row['backend_cpu_seconds'], '.1f')}"


def writers_table(summary: list[dict], seconds: float) -> str:
    """Markdown: 8-writer throughput per variant."""
    lines = [
        f"| variant | tx/s, median (runs) | x untracked | NOTIFYs in {seconds:.0f} s | fold batches"
        " | fold tasks done | stream CPU s, processes + backends | backlog at end | drain s | other load |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in summary:
        runs = ", ".join(f"{v:,}" for v in r["all_tx_per_s"])
        lines.append(
            f"| {r['variant']} | {r['tx_per_s']:,.0f} ({runs}) | {r['x_untracked']:.2f}"
            f" | {_n(r['notifications'])} | {_n(r['fold_batches'])} | {_n(r['fold_tasks_finished'])}"
            f" | {_cpu_pair(r)}"
            f" | {_n(r['backlog_at_end'])} | {_n(r['drain_seconds'], '.2f')} | {r['other_load']:.0%} |"
        )
    return "\n".join(lines)


def reading(results: dict) -> str:
    """One paragraph that reads the numbers (generated from them, so it stays true on a rerun)."""
    args = results["args"]
    parts = [
        _fold_reading(results["in_process"]),
        _celery_reading(results["celery"]),
        _latency_reading(results["latency"]),
        _steady_reading(results.get("steady")),
        _writers_reading(results["writers"], args["write_seconds"], args["writers"]),
    ]
    return " ".join(part for part in parts if part)


def _fold_reading(in_process: dict) -> str:
    runs = in_process["runs"]
    inserts = [r for r in runs if r["backlog"] == "inserts"]
    best = max(inserts, key=lambda r: r["events_per_s"])
    worst = min(inserts, key=lambda r: r["events_per_s"])
    updates = next((r for r in runs if r["backlog"] == "updates"), None)
    text = _prose(
        f"""**Fold.** In-process the fold does {worst["events_per_s"]:,.0f} to {best["events_per_s"]:,.0f}
        events/s across batch sizes on inserts
        {f"and {updates['events_per_s']:,.0f} on updates" if updates else ""}
        ({_met(min(r["events_per_s"] for r in runs) >= FOLD_TARGET)}: target 10,000/s)."""
    )
    if (best["events_per_s"] - worst["events_per_s"]) / best["events_per_s"] < 0.15:
        text += " The batch size barely matters from 1,000 events up."
    else:
        text += f" Batches of {best['batch_size']:,} did best, {worst['batch_size']:,} worst."
    explain = in_process["explain"].get("inserts")
    if explain:
        steps = sorted(explain["steps_ms"].items(), key=lambda kv: -kv[1])
        top = "; ".join(f"{name} {ms / explain['execution_ms']:.0%}" for name, ms in steps[:3])
        batch = next((r for r in inserts if r["batch_size"] == 5_000), best)
        text += " " + _prose(
            f"""A 5,000-event batch takes {batch["ms_per_batch"]:.0f} ms end to end, and the fold's one
            `INSERT ... SELECT` is most of it (EXPLAIN ANALYZE, instrumentation included:
            {explain["execution_ms"]:.0f} ms), its time going to {top}. Reading the events
            ({explain["scan"]}) is not the limit: building the JSONB and writing the `Change` rows are."""
        )
    return text


def _celery_reading(celery: list[dict]) -> str:
    if not celery:
        return ""
    return (
        "Through Celery a burst is folded at "
        + " and ".join(f"{r['events_per_s']:,.0f} events/s with `-c {r['concurrency']}`" for r in celery)
        + " (first commit to last `Change` visible, writing included): a second worker process cannot help"
        " one table, whose folds the checkpoint row lock serialises."
    )


def _latency_reading(latency: list[dict]) -> str:
    on = [r for r in latency if r["settings"].get("NOTIFY", True)]
    off = [r for r in latency if not r["settings"].get("NOTIFY", True)]
    text = (
        "**Latency.** With NOTIFY, "
        + ", ".join(
            f"p50 {r['seen']['p50']:.0f} ms / p99 {r['seen']['p99']:.0f} ms at {r['rate']:,} tx/s" for r in on
        )
        + f" ({_met(all(r['seen']['p99'] < r['target_p99_ms'] for r in on))}: target 250 ms). Poll-only, p99 "
        + ", ".join(
            f"{r['seen']['p99']:.0f} ms ({r['mode'].split(', ')[1]}, {r['rate']:,} tx/s)" for r in off
        )
        + f" ({_met(all(r['seen']['p99'] < r['target_p99_ms'] for r in off))}:"
        " target poll interval + 100 ms)."
    )
    long_tasks = [r for r in latency if r["fold_tasks_finished"] * 5 < r["fold_batches"]]
    if long_tasks:
        text += " " + _prose(
            f"""In {len(long_tasks)} of {len(latency)} runs the worker ran more than 5 fold batches per fold
            task: under steady writes one task keeps folding small batches back to back (it returns only
            when it finds no new work, within `FOLD_LINGER` if set), so the typical latency is that loop's
            period, not the wake-up path or the poll interval. The tail is the moments the loop does go idle:
            the next change then waits for a NOTIFY, or in poll-only mode for the next poll, which is why
            poll-only p99 sits near the poll interval while its p50 can be a few ms."""
        )
    lagging = [r for r in latency if r["achieved"] < 0.95 * r["rate"]]
    if lagging:
        text += (
            " The writers did not keep up in: "
            + ", ".join(f"{r['mode']} at {r['rate']:,} tx/s ({r['achieved']:,.0f} achieved)" for r in lagging)
            + "."
        )
    client = max(r["client_after_commit"]["p99"] for r in latency)
    text += (
        " A client-side timestamp taken after the commit returns lags the commit by up to"
        f" {client:.0f} ms (p99)"
        " on this 2-core machine, which is why the commit time is taken inside the statement."
    )
    return text


def _steady_reading(steady: dict | None) -> str:
    if not steady:
        return ""
    text = (
        f"Under steady writes NOTIFY stays rare ({steady['notify_per_s_before']:.1f}/s) for the fold task's"
        f" first {steady['max_seconds']:.0f} s, then {steady['notify_per_s_after']:.1f}/s"
    )
    if steady["longest_task_seconds"] > steady["max_seconds"] + 5:
        text += (
            f"; one fold task ran {steady['longest_task_seconds']:.0f} s, past its `max_seconds`: once the"
            " deadline has passed, `fold()` no longer lingers but arms the wake-up flag after every batch,"
            " and as long as `has_work()` finds new events it folds on instead of returning"
        )
    return text + "."


def _writers_reading(summary: list[dict], seconds: float, writers: int) -> str:
    by = {r["variant"]: r for r in summary}
    plain, bare = by["untracked"], by["tracked, no stream processes"]
    on, off = by["tracked, NOTIFY on"], by["tracked, NOTIFY off"]
    text = _prose(
        f"""**{writers} writers.** Untracked {plain["tx_per_s"]:,.0f} tx/s; tracked with no stream process
        {bare["tx_per_s"]:,.0f} ({bare["x_untracked"]:.2f}x); with the listener and the worker running,
        {on["tx_per_s"]:,.0f} with NOTIFY ({on["x_untracked"]:.2f}x) and {off["tx_per_s"]:,.0f} without
        ({off["x_untracked"]:.2f}x), so NOTIFY on vs off is {off["tx_per_s"] / on["tx_per_s"]:.2f}x."""
    )
    batches, notes = on["fold_batches"] or 0, on["notifications"] or 0
    if batches and notes >= batches / 2:
        text += " " + _prose(
            f"""NOTIFY was not sent per transaction but once per fold batch ({notes:,.0f} NOTIFYs,
            {batches:,.0f} batches in {seconds:.0f} s): the worker re-armed the flag after every batch, the
            next writer notified, and each notification woke the listener for a whole poll."""
        )
    else:
        text += " " + _prose(
            f"""Only {notes:,.0f} NOTIFY{" was" if notes == 1 else "s were"} sent in {seconds:.0f} s for
            {batches:,.0f} fold batches: while writes keep coming the fold keeps folding without re-arming the
            flag, so the commit-time NOTIFY lock is off the write path."""
        )
    text += " " + _prose(
        f"""The stream used {_cpu_pair(on)} s of CPU (processes + backends) with NOTIFY and
        {_cpu_pair(off)} s without, on a 2-core machine where the writers are CPU-bound: that, not NOTIFY,
        is what running the stream costs the writers here."""
    )
    disturbed = [r["variant"] for r in summary if r["other_load"] and r["other_load"] > MAX_OTHER_LOAD]
    if disturbed:
        text += " " + _prose(
            f"""Caution: other programs used more than {MAX_OTHER_LOAD:.0%} of the machine during the runs
            of {", ".join(disturbed)} (see "other load"), so these numbers are noisy."""
        )
    return text


def _prose(text: str) -> str:
    """One paragraph from a wrapped triple-quoted string."""
    return " ".join(text.split())


def _machine_paragraph(results: dict) -> str:
    m = results["machine"]
    return _prose(
        f"""Machine: {m["nproc"]} cores, shared by every process (PostgreSQL, Redis, the stream processes
        and the writers); PostgreSQL {m["postgresql"]} (shared_buffers {m["shared_buffers"]},
        synchronous_commit {m["synchronous_commit"]}); Python {m["python"]}, Django {m["django"]},
        Celery {m["celery"]}; audit_stream at `{m["git"]}`."""
    )


METHOD = _prose(
    """Method: one tracked table (`@audit_stream.track()`: Snapshot + BeforeDelete; columns name, price,
    stock, note) and an untracked twin, in a dedicated database (`audit_stream_bench_stream`, recreated and
    migrated at start). Before every run the tables, the event table, `audit_stream_change` and the
    checkpoint are truncated, vacuumed and checkpointed, and Redis DB 14 is flushed. The stream processes
    are the real ones (`celery -A worker worker -l info -c N` and `python -m worker.listen`), started for
    each run with its `AUDIT_STREAM` settings and stopped after it. Every run checks that each event became
    exactly one `Change` row (counts and distinct `event_id`s match, no event without a change). This
    machine is shared with other sessions: before each timed run the benchmark waits (within a budget for the
    whole run) until other programs use less than 10% of its CPU, and every table's "other load" column is
    the share of the machine's CPU other programs used during the run (its busy time from /proc/stat, less
    this benchmark's processes and its database's backends)."""
)


def _fold_method(a: dict) -> str:
    return _prose(
        f"""Backlog: {a["backlog"]:,} rows inserted with `bulk_create`, 5,000 per transaction. The
        in-process rows fold it with `audit_stream.stream.fold.fold(table, batch_size=N)` until caught up,
        from no checkpoint each time (with `FOLD_LINGER` 0, so the time is folding, not waiting for more);
        the updates row then updates every row (5,000 per transaction) and folds those events, whose
        diffs are against the changes already folded. The Celery rows write a
        burst of {a["burst"]:,} rows (1,000 per transaction, as fast as one process can) while the worker
        and the listener run idle; the time is from the first commit to the moment the last `Change` row is
        visible (sampled every 10 ms), so it includes the writing."""
    )


EXPLAIN_METHOD = _prose(
    """Where a 5,000-event batch from the middle of the backlog spends its SQL time: `EXPLAIN (ANALYZE)` of
    the fold's `INSERT ... SELECT` from `audit_stream/stream/batch.py` (rolled back), each step's time being
    the difference of inclusive node times."""
)


def _latency_method(a: dict) -> str:
    return _prose(
        f"""{a["latency_seconds"]:.0f} s of single-row insert transactions at a fixed rate, per mode (2
        writer processes for 200 tx/s, 4 for 1,000, each on a monotonic schedule), with one listener and one
        worker (`-c 1`). Each transaction is an autocommit `INSERT ... RETURNING id, clock_timestamp()`: the
        commit follows in the same server call, so that is the commit time on the database clock (early by
        the trigger and the WAL flush, well under a millisecond). Latency (p50 to max) is from it to the
        first 10 ms sample of `max(audit_stream_change.id)` showing the row's `Change` (a slight
        overestimate, up to 10 ms). `folded_at` minus the commit time is shown too: `folded_at` is `now()` of
        the fold transaction, i.e. its start, so it underestimates. Targets are judged on the overestimate:
        p99 < 250 ms with NOTIFY, < poll interval + 100 ms without. Stream CPU and other load as in the
        next table."""
    )


STEADY_METHOD = _prose(
    """Past the fold's `max_seconds`: NOTIFY on, 1,000 tx/s for 45 s (as above, one worker), counting the
    NOTIFYs a separate session receives before and after the 30 s that the fold task gives `fold()`
    (`max_seconds`), and how long the longest fold task ran (from the worker's log)."""
)


def _writers_method(a: dict) -> str:
    return _prose(
        f"""{a["writers"]} writer processes, each inserting one row per transaction (autocommit `save()`)
        for {a["write_seconds"]:.0f} s; median of {a["write_repeat"]} runs per variant, the order rotating.
        The listener and one worker (`-c 1`) run in every variant but the one without stream processes (whose
        events are folded after the run); for untracked they have nothing to do. NOTIFYs are counted by a
        separate session LISTENing on the channel; fold batches are the fold transactions that wrote `Change`
        rows; stream CPU is the worker's and the listener's processes, then their PostgreSQL backends;
        backlog is the events not yet folded when the writers stopped, drain the time to fold them. A run
        with other load above {MAX_OTHER_LOAD:.0%} is run again (at most {a["write_retries"]} times in all)
        and left out of the medians."""
    )


def markdown(results: dict) -> str:
    """The whole BENCHMARKS.md section."""
    a = results["args"]
    blocks = [
        SECTION,
        f"Measured {results['date']} with `{COMMAND}` ({results['total_seconds'] / 60:.1f} min).",
        _machine_paragraph(results),
        METHOD,
        "### Fold throughput",
        _fold_method(a),
        fold_table(results),
        celery_notes(results),
        EXPLAIN_METHOD,
        explain_table(results),
        "### Commit-to-Change latency",
        _latency_method(a),
        latency_table(results["latency"]),
        STEADY_METHOD,
        steady_table(results.get("steady")),
        f"### {a['writers']} concurrent writers",
        _writers_method(a),
        writers_table(results["writers"], a["write_seconds"]),
        "### Reading",
        reading(results),
    ]
    return "\n\n".join(blocks) + "\n"


def print_tables(results: dict) -> None:
    """The tables, on stdout."""
    print("\nFold throughput\n\n" + fold_table(results) + "\n\n" + celery_notes(results))
    print("\nOne 5,000-event fold batch\n\n" + explain_table(results))
    print("\nCommit-to-Change latency\n\n" + latency_table(results["latency"]))
    print("\nPast the fold's max_seconds\n\n" + steady_table(results.get("steady")))
    print(
        f"\n{results['args']['writers']} concurrent writers\n\n"
        + writers_table(results["writers"], results["args"]["write_seconds"])
    )
    print("\n" + reading(results))


def save(results: dict, quick: bool) -> None:
    """JSON into benchmarks/results/, and (full runs only) the section into BENCHMARKS.md."""
    suffix = "-quick" if quick else ""
    path = ROOT / "benchmarks" / "results" / f"stream-{results['date'][:10]}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"wrote {path.relative_to(ROOT)}")
    if not quick:
        replace_section(SECTION, markdown(results))
        log("updated BENCHMARKS.md")
