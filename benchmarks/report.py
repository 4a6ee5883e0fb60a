"""Turn the measurements into tables, a BENCHMARKS.md section and a JSON file."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.fnprofile import Profile
from benchmarks.variants import PGHISTORY, UNTRACKED, Variant
from benchmarks.workloads import Workload

HEADING = "## Write path (benchmarks/write.py)"


@dataclass
class Results:
    """Everything one run measured, plus how and where."""

    meta: dict
    variants: list[Variant]
    workloads: list[Workload]
    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    tps: dict[str, list[float]] = field(default_factory=dict)
    profiles: list[Profile] = field(default_factory=list)
    cpu: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def median(self, workload: str, variant: str) -> float | None:
        """Median seconds of a workload on a variant."""
        values = self.samples.get((workload, variant))
        return statistics.median(values) if values else None

    def ratio(self, workload: str, variant: str) -> float | None:
        """Median seconds on the variant over median seconds untracked (1.0 = no cost)."""
        base, value = self.median(workload, UNTRACKED), self.median(workload, variant)
        return value / base if base and value is not None else None

    def tps_median(self, variant: str) -> float | None:
        """Median transactions per second of the concurrent writers."""
        values = self.tps.get(variant)
        return statistics.median(values) if values else None


def _spread(values: list[float]) -> float:
    """(max - min) / median, as a fraction."""
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def main_table(results: Results) -> str:
    """Workload x variant: median seconds, rows/s, ratio to untracked, spread."""
    lines = [
        "| workload | variant | median s | rows/s | x untracked | spread |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for workload in results.workloads:
        if workload.linearity:
            continue
        for variant in results.variants:
            values = results.samples.get((workload.key, variant.key))
            if not values:
                continue
            median = statistics.median(values)
            lines.append(
                f"| {workload.description} | {variant.key} | {median:.3f} | {workload.rows / median:,.0f}"
                f" | {_fmt(results.ratio(workload.key, variant.key), '.2f')} | {_spread(values):.0%} |"
            )
    lines.extend(_concurrency_rows(results))
    return "\n".join(lines)


def _concurrency_rows(results: Results) -> list[str]:
    """Concurrent writers: transactions/s; the ratio is untracked tps over the variant's tps."""
    if not results.tps:
        return []
    meta = results.meta["settings"]
    description = f"{meta['writers']} writers x {meta['duration']:g} s, create() each"
    base = results.tps_median(UNTRACKED)
    rows = []
    for variant in results.variants:
        values = results.tps.get(variant.key)
        if not values:
            continue
        median = statistics.median(values)
        ratio = base / median if base else None
        rows.append(
            f"| {description} | {variant.key} | — | {median:,.0f} tx/s | {_fmt(ratio, '.2f')}"
            f" | {_spread(values):.0%} |"
        )
    return rows


def linearity_table(results: Results) -> str:
    """``bulk_create`` cost per row at each size, and how it grows."""
    sizes = sorted(
        (w for w in results.workloads if w.key == "bulk_create" or w.linearity), key=lambda w: w.rows
    )
    if not sizes:
        return "(not measured in this run)"
    header = " | ".join(f"µs/row at {w.rows:,}" for w in sizes)
    lines = [
        f"| variant | {header} | largest ÷ smallest |",
        "|---|" + "--:|" * (len(sizes) + 1),
    ]
    for variant in results.variants:
        per_row = [_per_row_us(results, w, variant) for w in sizes]
        growth = per_row[-1] / per_row[0] if per_row[0] and per_row[-1] else None
        cells = " | ".join(_fmt(v, ".1f") for v in per_row)
        lines.append(f"| {variant.key} | {cells} | {_fmt(growth, '.2f')} |")
    return "\n".join(lines)


def _per_row_us(results: Results, workload: Workload, variant: Variant) -> float | None:
    median = results.median(workload.key, variant.key)
    return None if median is None else 1e6 * median / workload.rows


def versus_table(results: Results) -> str:
    """Each audit_stream variant against the faster pghistory mode, workload by workload."""
    pgh = [v for v in results.variants if v.family == PGHISTORY]
    ours = [v for v in results.variants if v.family not in (PGHISTORY, UNTRACKED)]
    if not pgh or not ours:
        return ""
    lines = [
        "| workload | faster pghistory mode | its median s | "
        + " | ".join(f"{v.key} ÷ it" for v in ours)
        + " |",
        "|---|---|--:|" + "--:|" * len(ours),
    ]
    for workload in results.workloads:
        timed = [(results.median(workload.key, v.key), v.key) for v in pgh]
        timed = [t for t in timed if t[0] is not None]
        if not timed:
            continue
        best, mode = min(timed)
        cells = " | ".join(_fmt(_div(results.median(workload.key, v.key), best), ".2f") for v in ours)
        lines.append(f"| {workload.description} | {mode} | {best:.3f} | {cells} |")
    lines.extend(_versus_concurrency(results, pgh, ours))
    return "\n".join(lines)


def _versus_concurrency(results: Results, pgh: list[Variant], ours: list[Variant]) -> list[str]:
    timed = [(results.tps_median(v.key), v.key) for v in pgh]
    timed = [t for t in timed if t[0] is not None]
    if not timed:
        return []
    best, mode = max(timed)
    cells = " | ".join(_fmt(_div(best, results.tps_median(v.key)), ".2f") for v in ours)
    return [f"| concurrent writers (tx/s, inverted) | {mode} | {best:,.0f} tx/s | {cells} |"]


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def profile_tables(results: Results) -> str:
    """Per profiled workload: each function's median counters, then totals per statement."""
    parts = []
    for workload in _profiled_workloads(results):
        profiles = [p for p in results.profiles if p.workload.key == workload.key]
        parts += [
            f"#### {workload.description}",
            "",
            _functions_table(profiles),
            "",
            _totals_table(profiles),
            "",
        ]
    return "\n".join(parts)


def _profiled_workloads(results: Results) -> list[Workload]:
    keys = {p.workload.key for p in results.profiles}
    return [w for w in results.workloads if w.key in keys]


def _functions_table(profiles: list[Profile]) -> str:
    lines = [
        "| variant | function | role | calls | self µs/call | total µs/call |",
        "|---|---|---|--:|--:|--:|",
    ]
    for profile in profiles:
        for stat in profile.medians():
            calls = stat.calls or 1
            lines.append(
                f"| {profile.variant} | `{stat.function}` | {stat.role} | {stat.calls:,.0f}"
                f" | {1000 * stat.self_ms / calls:.1f} | {1000 * stat.total_ms / calls:.1f} |"
            )
    return "\n".join(lines)


def _totals_table(profiles: list[Profile]) -> str:
    lines = [
        "| variant | trigger functions, self µs/statement | helpers, µs/statement"
        " | all functions, µs/statement | wall µs/statement (profiled run) |",
        "|---|--:|--:|--:|--:|",
    ]
    for profile in profiles:
        rows = profile.workload.rows  # one statement per row in the profiled workloads
        stats = profile.medians()
        trigger = sum(s.self_ms for s in stats if s.role == "trigger")
        helpers = sum(s.self_ms for s in stats if s.role != "trigger")
        wall = statistics.median(profile.seconds)
        lines.append(
            f"| {profile.variant} | {1000 * trigger / rows:.1f} | {1000 * helpers / rows:.1f}"
            f" | {1000 * (trigger + helpers) / rows:.1f} | {1e6 * wall / rows:.0f} |"
        )
    return "\n".join(lines)


def markdown(results: Results) -> str:
    """The whole BENCHMARKS.md section."""
    meta = results.meta
    settings = meta["settings"]
    machine = meta["machine"]
    parts = [
        HEADING,
        "",
        f"Measured {meta['date']} with `{meta['command']}`: {settings['repeat']} repetitions, medians.",
        "",
        f"Machine: {machine['nproc']} cores; {machine['postgresql']['version']}"
        f" (shared_buffers {machine['postgresql']['shared_buffers']},"
        f" synchronous_commit {machine['postgresql']['synchronous_commit']},"
        f" fsync {machine['postgresql']['fsync']}); Python {machine['python']}, Django {machine['django']},"
        f" django-pghistory {machine['pghistory']}, django-pgtrigger {machine['pgtrigger']},"
        f" psycopg {machine['psycopg']}.",
        "",
        f"audit_stream: {meta['audit_stream']}.",
        "",
        "Load average (1, 5, 15 min) at start {} and at end {}: the machine is shared, so single-row"
        " timings carry noise; `audit_stream` and `audit_stream notify-off` differ by one flag check"
        " path, and the gap between them is a fair indication of it.".format(
            _load(meta["load_average_start"]), _load(meta["load_average_end"])
        ),
        "",
        "Variants (one table each, identical columns: name varchar(100), price numeric(10,2), stock int,"
        " note text, and a real Django foreign key to a 10-row Category table, i.e. a"
        " `DEFERRABLE INITIALLY DEFERRED` constraint):",
        "",
        *[f"- **{v.key}**: {v.description}." for v in results.variants],
        "",
        _method(settings),
        "",
        main_table(results),
        "",
        "`x untracked` is the variant's median time over the untracked median for the same workload in"
        " the same run (for the concurrent writers: untracked tx/s over the variant's tx/s), so 1.00"
        " means no cost. `spread` is (max - min) / median over the repetitions.",
        "",
        *_notes(results),
        "### Against the faster pghistory mode",
        "",
        "Median time of each audit_stream variant over the median of whichever pghistory mode was faster"
        " on that workload (above 1.00: audit_stream is slower).",
        "",
        versus_table(results),
        "",
        "### Linearity of bulk_create",
        "",
        linearity_table(results),
        "",
    ]
    if results.profiles:
        parts += [
            "### Profile",
            "",
            f"Each tracked variant, {len(results.profiles[0].runs)} runs per workload (variants rotating),"
            " each with `SET track_functions = 'all'` after `pg_stat_reset()`; counters of the functions"
            " that ran, read from `pg_stat_user_functions`, as medians over the runs. Self time excludes"
            " the functions a function calls; total time includes them. Only PL/pgSQL time is counted:"
            " capturing transition tables, queuing AFTER triggers and the index and foreign-key work of"
            " the tracked table itself are not in any function. Timing functions slows the run, so the"
            " wall time here is not comparable with the table above.",
            "",
            profile_tables(results),
        ]
    return "\n".join(parts)


def _load(values) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def _method(settings: dict) -> str:
    return (
        "Method: all variants live in one database (`audit_stream_bench`, recreated and migrated at"
        " start) and are measured in the same run. Each repetition runs every workload on every"
        " variant, the variant order rotating by one each repetition. Before every timed run the"
        " variant's tables, its event table and the library's context table are truncated, then"
        " `VACUUM ANALYZE` and `CHECKPOINT`; rows that updates and deletes work on are inserted"
        " beforehand with triggers disabled. After every run the row count, the event count (exactly one"
        " event per row written, for tracked variants), the events carrying a context and the"
        " context rows (one per in-context run) are checked; a wrong count stops the benchmark."
        f" Sizes: {settings['single']:,} single-row transactions, {settings['bulk']:,} rows for bulk"
        f" statements, bulk_create linearity at {', '.join(f'{n:,}' for n in settings['linearity'])};"
        f" {settings['writers']} writer processes for {settings['duration']:g} s."
    )


def _notes(results: Results) -> list[str]:
    notes = [
        "Notes:",
        "",
        '- The in-context rows run the whole loop inside `audit_stream.context(user="bench")` or'
        ' `pghistory.context(user="bench")`; the untracked variant runs the same loop without a context.',
        "- `QuerySet.delete()` takes Django's fast path on every variant (nothing cascades, no signal"
        " receivers): one `DELETE` statement, no primary keys fetched first.",
        "- `bulk_create` is sent as a single `INSERT` (Django sets no parameter limit on PostgreSQL).",
        "- audit_stream's execute wrapper is installed on the connection (as it is in any project using it),"
        " so every variant pays its per-statement Python check; pghistory's wrapper exists only inside"
        " `pghistory.context`.",
    ]
    notes.append(_notify_note(results))
    return [*notes, ""]


def _notify_note(results: Results) -> str:
    if not results.meta["notify_supported"]:
        return (
            "- NOTIFY is not implemented in this audit_stream: `audit_stream notify-off` is configured"
            " exactly like `audit_stream` (its own table, same triggers), so the difference between the"
            " two is measurement noise."
        )
    return (
        "- NOTIFY: no stream worker runs. Before each run of an audit_stream variant the harness does what"
        " the worker's fold does once it has caught up: with NOTIFY on it arms the wake-up flag"
        " (`audit_stream.stream.wakeup.arm()`), so the run's first statement takes it and sends one"
        " NOTIFY while every statement checks it; with `NOTIFY: False` the flag is never armed."
        " The benchmark LISTENs and checks each run sent exactly 1 (on) or 0 (off) notifications."
        " A busy worker that re-arms often would cause more NOTIFYs than this measures."
    )


def to_json(results: Results) -> dict:
    """Everything, raw samples included."""
    return {
        **results.meta,
        "variants": [
            {"key": v.key, "model": v.model_name, "description": v.description} for v in results.variants
        ],
        "workloads": [
            {
                "key": w.key,
                "description": w.description,
                "rows": w.rows,
                "variants": {
                    v.key: {
                        "samples_s": results.samples[(w.key, v.key)],
                        "median_s": results.median(w.key, v.key),
                        "rows_per_s": w.rows / results.median(w.key, v.key),
                        "ratio_to_untracked": results.ratio(w.key, v.key),
                    }
                    for v in results.variants
                    if (w.key, v.key) in results.samples
                },
            }
            for w in results.workloads
        ],
        "concurrent": {
            v: {"samples_tps": values, "median_tps": statistics.median(values)}
            for v, values in results.tps.items()
        },
        "profiles": [p.as_dict() for p in results.profiles],
    }


def write_json(results: Results, path: Path) -> None:
    """Write :func:`to_json` to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(results), indent=2) + "\n")


def cpu_table(results: Results) -> str:
    """Median CPU time per row (PostgreSQL backend + client), each workload and variant."""
    lines = [
        "| workload | variant | CPU µs/row | x untracked | spread |",
        "|---|---|--:|--:|--:|",
    ]
    for workload in results.workloads:
        base = results.cpu.get((workload.key, UNTRACKED))
        base_median = statistics.median(base) if base else None
        for variant in results.variants:
            values = results.cpu.get((workload.key, variant.key))
            if not values:
                continue
            median = statistics.median(values)
            ratio = median / base_median if base_median else None
            lines.append(
                f"| {workload.description} | {variant.key} | {1e6 * median / workload.rows:.0f}"
                f" | {_fmt(ratio, '.2f')} | {_spread(values):.0%} |"
            )
    return "\n".join(lines)
