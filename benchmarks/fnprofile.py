"""Where the trigger time goes: ``pg_stat_user_functions`` for a workload.

Each profiled run executes the workload with ``track_functions = 'all'`` (a
superuser setting) on the benchmark's own session, after ``pg_stat_reset()``,
then reads back the counters of every PL/pgSQL function that ran. Timing
functions has a cost of its own, so these runs are separate from the timed
ones. Runs are repeated and each function's counters reported as medians.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

from benchmarks import db, notify, runner
from benchmarks.variants import Variant
from benchmarks.workloads import Workload


@dataclass(frozen=True)
class FunctionStats:
    """The counters of one function over a profiled run (or their medians over several)."""

    function: str
    role: str
    calls: float
    total_ms: float
    self_ms: float

    def as_dict(self) -> dict:
        """For JSON."""
        return asdict(self)


@dataclass
class Profile:
    """The profiled runs of one workload on one variant."""

    workload: Workload
    variant: str
    seconds: list[float] = field(default_factory=list)
    runs: list[list[FunctionStats]] = field(default_factory=list)

    def medians(self) -> list[FunctionStats]:
        """Each function's median counters over the runs (0 in a run where it did not appear)."""
        names = {(s.function, s.role) for run in self.runs for s in run}
        stats = [
            FunctionStats(
                function=name,
                role=role,
                calls=statistics.median(_get(run, name, "calls") for run in self.runs),
                total_ms=statistics.median(_get(run, name, "total_ms") for run in self.runs),
                self_ms=statistics.median(_get(run, name, "self_ms") for run in self.runs),
            )
            for name, role in names
        ]
        return sorted(stats, key=lambda s: (s.role != "trigger", -s.self_ms))

    def as_dict(self) -> dict:
        """For JSON."""
        return {
            "workload": self.workload.key,
            "variant": self.variant,
            "wall_s": self.seconds,
            "runs": [[s.as_dict() for s in run] for run in self.runs],
            "medians": [s.as_dict() for s in self.medians()],
        }


def _get(run: list[FunctionStats], name: str, attribute: str) -> float:
    return next((getattr(s, attribute) for s in run if s.function == name), 0)


def profile(
    workload: Workload, variant: Variant, category_ids: list[int]
) -> tuple[float, list[FunctionStats]]:
    """Run the workload once with function tracking; return its seconds and the function counters."""
    runner.prepare(variant, category_ids, prefill=workload.prefill)
    timed = workload.prepare(variant, workload.rows, category_ids)
    triggers = _trigger_functions(variant)
    db.execute("SELECT pg_stat_reset()")
    db.execute("SET track_functions = 'all'")
    with notify.variant_settings(variant):
        start = time.perf_counter()
        timed()
        seconds = time.perf_counter() - start
    db.execute("SET track_functions = 'none'")
    return seconds, _read(triggers)


def _trigger_functions(variant: Variant) -> set[str]:
    """The names of the functions the variant's table triggers call."""
    rows = db.execute(
        "SELECT p.proname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid"
        " WHERE t.tgrelid = %s::regclass AND NOT t.tgisinternal",
        [variant.model._meta.db_table],
    )
    return {name for (name,) in rows}


def _read(triggers: set[str]) -> list[FunctionStats]:
    """The counters of every function called since the reset (flushed first)."""
    # Statistics reach shared memory when the backend goes idle; force the
    # next flush, let it happen, then read a fresh snapshot.
    db.execute("SELECT pg_stat_force_next_flush()")
    db.execute("SELECT pg_stat_clear_snapshot()")
    rows = db.execute(
        "SELECT funcname, calls, total_time, self_time FROM pg_stat_user_functions WHERE calls > 0"
    )
    return [
        FunctionStats(
            function=name,
            role="trigger" if name in triggers else "helper",
            calls=calls,
            total_ms=total,
            self_ms=self_time,
        )
        for name, calls, total, self_time in rows
    ]
