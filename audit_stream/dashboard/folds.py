"""The fold's last hour: events folded per minute, and commit-to-fold latency (from FoldRun rows)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import DEFAULT_DB_ALIAS

from audit_stream.dashboard import formats
from audit_stream.dashboard.reading import rows

__all__ = ["Latency", "Throughput", "latency", "throughput"]


@dataclass
class Throughput:
    """Events folded per minute over the last hour, oldest minute first."""

    minutes: list[tuple[datetime, int]]

    @property
    def total(self) -> int:
        return sum(n for _, n in self.minutes)

    @property
    def peak(self) -> int:
        return max((n for _, n in self.minutes), default=0)

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "peak_per_minute": self.peak,
            "per_minute": [{"minute": minute, "folded": n} for minute, n in self.minutes],
        }


# The chart's window: the last 60 minutes, the current one included, on the
# database's clock.
_WINDOW_SQL = "SELECT date_trunc('minute', now()) - interval '59 minutes'"

# Events folded per minute since the window's start, from FoldRun rows by the
# minute their fold finished: one range of the audit_stream_foldrun_time index.
_THROUGHPUT_SQL = """
SELECT date_trunc('minute', finished_at), sum(folded)::bigint
FROM audit_stream_foldrun
WHERE finished_at >= %(start)s
GROUP BY 1
"""


def throughput(using: str = DEFAULT_DB_ALIAS) -> Throughput:
    """60 (minute, events folded) pairs, oldest first; minutes without a fold are 0."""
    start = rows(_WINDOW_SQL, using=using)[0][0]
    folded = dict(rows(_THROUGHPUT_SQL, {"start": start}, using))
    minutes = [start + timedelta(minutes=n) for n in range(60)]
    return Throughput(minutes=[(minute, folded.get(minute, 0)) for minute in minutes])


@dataclass
class Latency:
    """Commit-to-fold latency of the folds of the last hour (FoldRun.lag_ms), in milliseconds."""

    folds: int
    p50: int | None
    p95: int | None
    max: int | None

    def display(self, name: str) -> str:
        ms = getattr(self, name)
        return formats.duration(None if ms is None else ms / 1000)

    @property
    def p50_display(self) -> str:
        return self.display("p50")

    @property
    def p95_display(self) -> str:
        return self.display("p95")

    @property
    def max_display(self) -> str:
        return self.display("max")

    def as_dict(self) -> dict:
        return {"folds": self.folds, "p50_ms": self.p50, "p95_ms": self.p95, "max_ms": self.max}


# Percentiles over fold runs (each run's lag_ms is its oldest event's), as
# values of real runs (percentile_disc), in the chart's window.
_LATENCY_SQL = """
SELECT count(*),
       percentile_disc(0.5) WITHIN GROUP (ORDER BY lag_ms),
       percentile_disc(0.95) WITHIN GROUP (ORDER BY lag_ms),
       max(lag_ms)
FROM audit_stream_foldrun
WHERE finished_at >= date_trunc('minute', now()) - interval '59 minutes'
  AND lag_ms IS NOT NULL
"""


def latency(using: str = DEFAULT_DB_ALIAS) -> Latency:
    return Latency(*rows(_LATENCY_SQL, using=using)[0])
