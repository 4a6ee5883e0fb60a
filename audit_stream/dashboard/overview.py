"""The overview page: tables and lanes, throughput, latency, processes and retention at a glance."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db import DEFAULT_DB_ALIAS
from django.utils import timezone

from audit_stream.dashboard import formats
from audit_stream.dashboard.folds import Latency, Throughput, latency, throughput
from audit_stream.dashboard.processes import OpenTransaction, Process, oldest_transaction, processes
from audit_stream.dashboard.retention import retention_run_dict, retention_runs
from audit_stream.dashboard.stream import Lane, StreamTable, stream_tables
from audit_stream.models import RetentionRun

__all__ = ["Overview", "overview"]


@dataclass
class Overview:
    """Everything on the overview page (and in ``api/overview.json``)."""

    tables: list[StreamTable]
    throughput: Throughput
    latency: Latency
    processes: list[Process]
    retention_runs: list[RetentionRun]
    oldest_transaction: OpenTransaction | None
    generated_at: datetime = field(default_factory=timezone.now)

    @property
    def backlog_display(self) -> str:
        """Unfolded events over every table."""
        return formats.count(
            sum(t.backlog for t in self.tables), estimated=not all(t.backlog_exact for t in self.tables)
        )

    @property
    def lag_seconds(self) -> float | None:
        """The largest lag of any table."""
        return max((t.lag_seconds for t in self.tables if t.lag_seconds is not None), default=None)

    @property
    def lag_display(self) -> str:
        return formats.duration(self.lag_seconds)

    @property
    def stalled_lanes(self) -> list[tuple[StreamTable, Lane]]:
        """Every lane, of any table, whose events wait while its checkpoint stands still."""
        return [(table, lane) for table in self.tables for lane in table.stalled_lanes]

    @property
    def beat(self) -> Process | None:
        """Celery beat (its heartbeat comes with the sweep it schedules every 30 s)."""
        return next((p for p in self.processes if p.kind == "beat"), None)

    def as_dict(self) -> dict:
        beat = self.beat
        return {
            "generated_at": self.generated_at,
            "tables": [t.as_dict() for t in self.tables],
            "stalled_lanes": [
                {"event_table": t.event_table, "lane": lane.lane} for t, lane in self.stalled_lanes
            ],
            "throughput": self.throughput.as_dict(),
            "latency": self.latency.as_dict(),
            "processes": [p.as_dict() for p in self.processes],
            "beat": {
                "last_seen": beat.last_seen if beat else None,
                "alive": beat.alive if beat else False,
                "retention_runs": [retention_run_dict(run) for run in self.retention_runs],
            },
            "oldest_transaction": self.oldest_transaction.as_dict() if self.oldest_transaction else None,
        }


def overview(using: str = DEFAULT_DB_ALIAS) -> Overview:
    return Overview(
        tables=stream_tables(using),
        throughput=throughput(using),
        latency=latency(using),
        processes=processes(using),
        retention_runs=retention_runs(limit=5),
        oldest_transaction=oldest_transaction(using),
    )
