"""The concurrent writer's latency pooled over several partition-drop runs of ``benchmarks.retention``.

Usage::

    python -m benchmarks.retention --partitioned --layouts partitioned ... > run1.log 2>&1   # once per run
    python -m benchmarks.retention_pool run1.log run2.log ...

A 10 s window of a writer at a few hundred transactions per second holds too
few transactions for its p99 to show a 1.2x bound either way. Each partitioned
run logs its result (``partitioned: {...}``) with the bounds of its windows and
the path of its writer's file (kept in the run's log directory); this pools
the transactions of every run's windows: alone (the control and baseline
windows), from the prune's start (10 s), and that window split into the
prune's own seconds and the rest. It also sets the control windows against
the baseline windows: the machine's own noise, pooled the same way.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from benchmarks.perfapp.harness import read_writer, summarize_ms

_RESULT = re.compile(r"\]   partitioned: (\{.*\})$")


def pool(paths: list[str]) -> dict[str, list[float]]:
    """Each window's latencies (seconds), pooled over the runs whose logs are ``paths``."""
    pooled: dict[str, list[float]] = {
        name: [] for name in ("control", "baseline", "from_prune_start", "during_prune", "after_prune")
    }
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            found = _RESULT.search(line)
            if not found:
                continue
            result = json.loads(found.group(1))
            if "windows" not in result:
                raise SystemExit(f"{path}: logged before runs kept their windows; run it again")
            rows = [(row[0], row[1]) for row in read_writer(Path(result["writer_file"]))["rows"]]
            for name, (start, end) in result["windows"].items():
                pooled[name] += [latency for began, latency in rows if start <= began < end]
            start, end = result["windows"]["from_prune_start"]
            prune_end = start + result["seconds"]
            pooled["during_prune"] += [latency for began, latency in rows if start <= began < prune_end]
            pooled["after_prune"] += [latency for began, latency in rows if prune_end <= began < end]
    return pooled


def main(argv: list[str] | None = None) -> None:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        raise SystemExit(__doc__.split("\n\n")[1])
    pooled = pool(paths)
    pooled["alone"] = pooled["control"] + pooled["baseline"]
    summaries = {name: summarize_ms(latencies) for name, latencies in pooled.items()}
    for name in ("alone", "from_prune_start", "during_prune", "after_prune", "control", "baseline"):
        s = summaries[name]
        if s["n"]:
            print(f"{name:>16}: n {s['n']:>6,}  p50 {s['p50']:.2f}  p95 {s['p95']:.2f}  p99 {s['p99']:.2f}"
                  f"  max {s['max']:.1f} ms")  # fmt: skip
    alone = summaries["alone"]["p99"]
    for name in ("from_prune_start", "during_prune", "after_prune"):
        if summaries[name]["n"] and alone:
            print(f"{name} p99 / alone p99: {summaries[name]['p99'] / alone:.2f}x")
    control, baseline = summaries["control"]["p99"], summaries["baseline"]["p99"]
    if baseline:
        print(f"noise, control p99 / baseline p99: {control / baseline:.2f}x")


if __name__ == "__main__":
    main()
