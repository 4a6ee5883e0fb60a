"""The retention benchmark's report: its tables, its reading, and the BENCHMARKS.md section.

Of ``python -m benchmarks.retention`` (benchmarks/retention.py).
"""

from __future__ import annotations

from benchmarks.perfapp.harness import fmt, met, prose, table

SECTION = "## Retention (benchmarks/retention.py)"
COMMAND = "python -m benchmarks.retention"
TARGET_ROWS_PER_S = 50_000


# --------------------------------------------------------------------------- report


def setup_table(results: dict) -> str:
    s = results["setup"]
    return table(
        ["step", "rows", "seconds", "rows/s"],
        [
            [
                "`bulk_create`, 50,000 per statement (triggers on)",
                f"{s['rows']:,}",
                f"{s['insert_s']:.1f}",
                f"{s['insert_rows_per_s']:,.0f}",
            ],
            [
                "fold them all in-process (`fold_all()`)",
                f"{s['rows']:,}",
                f"{s['fold_s']:.1f}",
                f"{s['fold_events_per_s']:,.0f}",
            ],
            [
                "age them (`UPDATE`, replica mode)",
                f"{s['rows']:,}",
                f"{s['backdate_s']:.1f}",
                f"{s['rows'] / s['backdate_s']:,.0f}",
            ],
        ],
    )


def prune_table(results: dict) -> str:
    rows = []
    runs = [
        (f"alone: median of {r['repetitions']} ({r['range'][0]:,.0f} to {r['range'][1]:,.0f})", r)
        for r in results["prunes"]
    ]
    runs += [(f"writer at {w['rate']} tx/s", w["prune"]) for w in results["writer"]]
    for label, r in runs:
        b = r["batch_ms"]
        rows.append(
            [
                f"{r['batch_size']:,}",
                label,
                f"{r['deleted']:,}",
                f"{r['seconds']:.1f}",
                f"**{r['rows_per_s']:,.0f}**",
                fmt(r["candidates_s"], ".1f"),
                f"{r['delete_s']:.1f}",
                f"{r['delete_rows_per_s']:,.0f}",
                str(r["batches"]),
                f"{b['p50']:.0f} / {b['p99']:.0f} / {b['max']:.0f}",
                f"{r['first_tenth_batch_ms']:.0f} → {r['last_tenth_batch_ms']:.0f}",
            ]
        )
    headers = [
        "batch size",
        "run",
        "rows deleted",
        "total s",
        "rows/s",
        "choose s",
        "delete s",
        "delete rows/s",
        "batches",
        "ms/batch p50 / p99 / max",
        "ms/batch first → last 10%",
    ]
    return table(headers, rows, right=set(range(2, len(headers))) | {0})


def explain_table(results: dict) -> str:
    explain = results.get("explain")
    if not explain:
        return "(EXPLAIN skipped: audit_stream.retention's private SQL changed.)"
    rows = []
    for when, plan in explain["plans"].items():
        rows.append(
            [
                when,
                f"{plan['deleted_before']:,}",
                "whole statement",
                "",
                f"{plan['execution_ms']:.0f}",
                "",
                "",
            ]
        )
        for scan in plan["scans"]:
            rows.append(
                [
                    "",
                    "",
                    f"{scan['node']} on `{scan['relation']}`"
                    + (f" (x{scan['loops']:,})" if scan["loops"] > 1 else ""),
                    f"{scan['rows']:,}",
                    f"{scan['ms']:.0f}",
                    fmt(scan["heap_fetches"]),
                    f"{scan['buffers']:,}",
                ]
            )
    headers = ["next batch", "rows deleted before", "step", "rows", "ms", "heap fetches", "buffers"]
    return table(headers, rows, right={1, 3, 4, 5, 6})


def writer_table(results: dict) -> str:
    rows = []
    for w in results["writer"]:
        for phase in ("without", "during"):
            s = w[phase]
            rows.append(
                [
                    f"{w['batch_size']:,}",
                    "without a prune" if phase == "without" else "during the prune",
                    f"{s['seconds']:.1f}",
                    f"{s['n']:,}",
                    f"{s['tx_per_s']:.0f}",
                    f"{s['p50']:.2f}",
                    f"{s['p99']:.2f}",
                    f"{s['max']:.1f}",
                    "" if phase == "without" else f"**{w['p99_ratio']:.2f}x**",
                ]
            )
    headers = [
        "prune batch size",
        "writer",
        "window s",
        "transactions",
        "tx/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "p99 during ÷ without",
    ]
    return table(headers, rows, right=set(range(2, len(headers))) | {0})


def explain_reading(explain: dict | None) -> str:
    """What the EXPLAIN of an early and a late batch shows, in a few sentences."""
    if not explain or len(explain["plans"]) != 2:
        return ""
    early, late = explain["plans"].values()
    size = f"{explain['batch_size']:,}-row"
    if late["execution_ms"] < 1.25 * early["execution_ms"]:
        return (
            f"A {size} batch costs about the same early and late in a prune ({early['execution_ms']:.0f} ms"
            f" after the first batch, {late['execution_ms']:.0f} ms after {late['deleted_before']:,} rows)"
            " in `EXPLAIN ANALYZE`. "
        )
    grown = [
        (first, scan)
        for first, scan in zip(early["scans"], late["scans"], strict=False)
        if first["relation"] == scan["relation"] and scan["buffers"] > 2 * first["buffers"]
    ]
    text = (
        f"A {size} batch takes {early['execution_ms']:.0f} ms in `EXPLAIN ANALYZE` after the first batch and"
        f" {late['execution_ms']:.0f} ms after {late['deleted_before']:,} rows are gone"
        f" ({late['execution_ms'] / early['execution_ms']:.1f}x)"
    )
    if grown:
        text += "; the scans that read more: " + ", ".join(
            f"the {scan['node']} on `{scan['relation']}` ({first['buffers']:,} → {scan['buffers']:,} buffers,"
            f" {first['ms']:.0f} → {scan['ms']:.0f} ms)"
            for first, scan in grown
        )
    text += "."
    if any("Index" in scan["node"] and scan["loops"] == 1 for _, scan in grown):
        text += (
            " Each batch's ordered scans start at the beginning of their index (`ORDER BY id LIMIT n` on the"
            " temporary table of chosen rows, and the event table's primary key under a merge join) and walk"
            " over the entries of every row already deleted, so the work of a batch grows with the rows"
            " pruned before it in the same run, and the total with their square; remembering the last id"
            " deleted (`WHERE id > last`) would keep it flat."
        )
    return text + " "


def reading(results: dict) -> str:
    prunes = results["prunes"]
    ok = all(r["rows_per_s"] >= TARGET_ROWS_PER_S for r in prunes)
    rates = ", ".join(f"{r['rows_per_s']:,.0f} rows/s with batches of {r['batch_size']:,}" for r in prunes)
    text = (
        f"**Prune.** {results['setup']['rows']:,} events pruned at {rates}"
        f" ({met(ok)}: target 50,000 rows/s). "
    )
    for r in prunes:
        choose = r["candidates_s"] or 0.0
        text += (
            f"With {r['batch_size']:,}-row batches, choosing the rows took {choose:.1f} s"
            f" ({choose / r['seconds']:.0%}) and deleting them {r['delete_s']:.1f} s"
            f" ({r['delete_rows_per_s']:,.0f} rows/s, {r['batch_ms']['p50']:.0f} ms per batch at the median,"
            f" {r['first_tenth_batch_ms']:.0f} ms in the first tenth of the batches and"
            f" {r['last_tenth_batch_ms']:.0f} ms in the last). "
        )
    text += explain_reading(results.get("explain"))
    writer = results["writer"]
    text += (
        "**Writer.** A writer inserting one row per transaction at "
        f"{writer[0]['rate']} tx/s: p99 "
        + "; ".join(
            f"{w['without']['p99']:.1f} ms without a prune and {w['during']['p99']:.1f} ms during one with"
            f" {w['batch_size']:,}-row batches ({w['p99_ratio']:.1f}x; max {w['during']['max']:.0f} ms)"
            for w in writer
        )
        + ". Its INSERT and the prune's DELETE take the same, non-conflicting table lock and touch"
        " different rows"
    )
    slowest = max(w["during"]["max"] for w in writer)
    batch = min(w["prune"]["batch_ms"]["p50"] for w in writer)
    if slowest < batch:
        text += (
            f", and its slowest transaction during a prune ({slowest:.0f} ms) is shorter than a median"
            f" batch ({batch:.0f} ms or more): it does not queue behind the batches. What it feels is the"
            " prune's CPU, I/O and WAL on a 2-core machine it shares with PostgreSQL."
        )
    else:
        text += (
            f"; its slowest transaction during a prune ({slowest:.0f} ms) is as long as a median batch"
            f" ({batch:.0f} ms), so some may have waited for one."
        )
    return text


def markdown(results: dict) -> str:
    a, m = results["args"], results["machine"]
    c = results["command"]
    blocks = [
        SECTION,
        f"Measured {results['date']} with `{COMMAND}` ({results['total_seconds'] / 60:.1f} min).",
        prose(
            f"""Machine: {m["nproc"]} cores (shared with PostgreSQL and the writer); PostgreSQL
            {m["postgresql"]} (shared_buffers {m["shared_buffers"]}, work_mem {m["work_mem"]},
            synchronous_commit {m["synchronous_commit"]}); Python {m["python"]}, Django {m["django"]};
            audit_stream at `{m["git"]}`
            (sources sha1 `{m["audit_stream_sha1"]}`); load average at start {m["load_at_start"][0]:.1f}, at
            the end {results["load_at_end"][0]:.1f}."""
        ),
        prose(
            f"""Method: a dedicated database (`audit_stream_bench_retention`, recreated and migrated at
            start), one tracked model (`perfapp.Item`, `@audit_stream.track()`: Snapshot + BeforeDelete;
            columns name, price, stock, note) and the policy `AUDIT_STREAM = {{"RETENTION":
            {{"perfapp.ItemEvent": {{"max_age": "90d"}}}}}}`. Set-up: {a["rows"]:,} rows inserted with
            `bulk_create` (one event each), folded in-process, then every event aged by 100 days (one
            `UPDATE` with `session_replication_role = replica`, which skips the append-only trigger). The
            aged events are copied aside once; before each prune the event table is truncated and refilled
            from the copy, vacuumed, analysed and checkpointed, so every prune starts from the same table. A
            prune is `audit_stream.retention.prune(targets=["perfapp.ItemEvent"], batch_size=B)`; "choose"
            is its candidates query (timed by wrapping `retention.batches.fill`), "delete" the batches
            after it (each batch ends with a progress call). Each prune is checked: it reports every aged
            event deleted, none older than 90 days is left, the writer's events and all `Change` rows are
            still there."""
        ),
        "### Set-up",
        setup_table(results),
        "### Prune throughput",
        prune_table(results),
        prose(
            """"ms/batch first → last 10%": mean time of a batch in the first and in the last tenth of the
            batches of that prune. Where the time of one batch goes, early and late in a prune (`EXPLAIN
            (ANALYZE, BUFFERS)` of the next batch's statement, `retention.counts.EVENT_DELETE_BATCH`, run
            between two batches on the prune's connection and rolled back):"""
        ),
        explain_table(results),
        "### A concurrent writer",
        prose(
            f"""A separate process (`python -m benchmarks.perfapp.writer`) inserts one `perfapp.Item` per
            autocommit transaction at a steady {a["writer_rate"]} tx/s into the tracked table (so each
            transaction also writes an event), and records each statement's latency (send to commit
            returned). The same writer runs {a["baseline_seconds"]:.0f} s without a prune, then through a
            whole prune; the prune rows above marked "writer" are those prunes."""
        ),
        writer_table(results),
        "### `manage.py prune_history`",
        f"`{' '.join(c['argv'])}` on the same {a['rows']:,} aged events ({c['rows_per_s']:,.0f} rows/s"
        " end to end, including the command's bookkeeping); its output, as printed:",
        "```\n" + c["output"].rstrip() + "\n```",
        "### Reading",
        reading(results),
    ]
    return "\n\n".join(blocks) + "\n"


def print_tables(results: dict) -> None:
    print("\nSet-up\n\n" + setup_table(results))
    print("\nPrune throughput\n\n" + prune_table(results))
    print("\nOne delete batch, early and late\n\n" + explain_table(results))
    print("\nA concurrent writer\n\n" + writer_table(results))
    print("\nprune_history\n\n" + results["command"]["output"])
    print(reading(results))
