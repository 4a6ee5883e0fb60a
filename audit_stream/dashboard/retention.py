"""Retention on the dashboard: the policies in force, the last runs, and when beat runs next."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from audit_stream import config
from audit_stream.dashboard import formats
from audit_stream.models import RetentionRun

__all__ = ["Retention", "retention", "retention_run_dict", "retention_runs"]


def retention_runs(limit: int = 10) -> list[RetentionRun]:
    """The latest retention runs (index audit_stream_retention_time), each with ``took_display``."""
    runs = list(RetentionRun.objects.order_by("-started_at", "-id")[:limit])
    for run in runs:
        took = (run.finished_at - run.started_at).total_seconds() if run.finished_at else None
        run.took_display = formats.duration(took) if took is not None else None
    return runs


def retention_run_dict(run: RetentionRun) -> dict:
    return {
        "id": run.id,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "trigger": run.trigger,
        "dry_run": run.dry_run,
        "rows": run.rows,
        "errors": run.errors,
    }


@dataclass
class Retention:
    """The policies in force, the last runs, and when beat runs next."""

    policies: list[dict] | None  # None: retention.describe_policies() is not available
    policy_error: str
    runs: list[RetentionRun]
    interval_seconds: float | None
    last_beat_run: RetentionRun | None

    @property
    def next_run_at(self) -> datetime | None:
        if self.interval_seconds is None or self.last_beat_run is None:
            return None
        return self.last_beat_run.started_at + timedelta(seconds=self.interval_seconds)

    @property
    def interval_display(self) -> str:
        return formats.duration(self.interval_seconds)


def retention(limit: int = 20) -> Retention:
    """What :mod:`audit_stream.retention` says is in force, and what it did."""
    from audit_stream import retention as retention_module

    describe = getattr(retention_module, "describe_policies", None)
    policies, error = None, ""
    if describe is not None:
        try:
            policies = [
                {**policy, "max_age_display": formats.age(policy.get("max_age"))} for policy in describe()
            ]
        except ValueError as exc:  # a bad setting (the system checks say so too)
            error = str(exc)
    interval = getattr(config, "retention_interval", None)
    return Retention(
        policies=policies,
        policy_error=error,
        runs=retention_runs(limit),
        interval_seconds=interval() if interval else None,
        last_beat_run=RetentionRun.objects.filter(trigger="beat").order_by("-started_at", "-id").first(),
    )
