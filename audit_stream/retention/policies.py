"""Retention policies: what to keep of each table, read from ``AUDIT_STREAM["RETENTION"]``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from audit_stream import config, registry

__all__ = ["Policy", "describe_policies", "parse_duration", "policies"]

# Targets that are not event models.
CHANGES = "changes"
ROW_LOG = "row_log"
MESSAGES = "webhook_messages"
ATTEMPTS = "webhook_attempts"
SINK_MESSAGES = "sink_messages"
_SPECIAL = (CHANGES, MESSAGES, ATTEMPTS, SINK_MESSAGES)
_DEFAULTS = {MESSAGES: {"max_age": "30d"}, ATTEMPTS: {"max_age": "30d"}, SINK_MESSAGES: {"max_age": "30d"}}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str) -> timedelta:
    """``"90d"`` → 90 days. Units: s, m, h, d, w. Raises ``ValueError`` with the accepted forms."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", str(value))
    if not match or int(match.group(1)) == 0:
        raise ValueError(
            f"{value!r} is not a duration; write a positive number and a unit, e.g. 90d, 12h, 2w."
        )
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


@dataclass(frozen=True)
class Policy:
    """What to keep of one table. ``max_age`` None and ``keep_last`` None: keep forever."""

    max_age: timedelta | None = None
    keep_last: int | None = None

    @property
    def keeps_forever(self) -> bool:
        return self.max_age is None and self.keep_last is None

    @classmethod
    def parse(cls, value: dict | None, where: str) -> Policy:
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a dict like {{'max_age': '90d', 'keep_last': 10}} or None.")
        unknown = set(value) - {"max_age", "keep_last"}
        if unknown:
            raise ValueError(f"{where} has unknown keys {sorted(unknown)}; use max_age and keep_last.")
        max_age = value.get("max_age")
        keep_last = value.get("keep_last")
        if keep_last is not None and (
            not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 1
        ):
            raise ValueError(f"{where}['keep_last'] must be a positive integer or None, not {keep_last!r}.")
        try:
            age = parse_duration(max_age) if max_age is not None else None
        except ValueError as exc:
            raise ValueError(f"{where}['max_age']: {exc}") from None
        return cls(age, keep_last)

    def describe(self) -> dict:
        return {
            "max_age": f"{int(self.max_age.total_seconds())}s" if self.max_age else None,
            "keep_last": self.keep_last,
        }


def event_models() -> dict[str, type]:
    """Every event model, by its label (``"shop.OrderEvent"``)."""

    return {model._meta.label: model for model in registry.event_models.values()}


def row_log_model() -> type:
    from audit_stream.models import RowLog

    return RowLog


def policies() -> dict[str, Policy]:
    """The policy of every target: each event model's label, changes, webhook and sink messages, attempts.

    Raises ``ValueError`` for an invalid setting (also reported by the system checks).
    """
    raw = config.retention()
    if not isinstance(raw, dict):
        raise ValueError('AUDIT_STREAM["RETENTION"] must be a dict of policies.')
    models = event_models()
    lower = {label.lower(): label for label in models}
    for key in raw:
        if key not in ("default", ROW_LOG) and key not in _SPECIAL and key.lower() not in lower:
            raise ValueError(
                f'AUDIT_STREAM["RETENTION"] has an unknown key {key!r}: use "default", "row_log", "changes",'
                ' "webhook_messages", "webhook_attempts", "sink_messages" or an event model label such as'
                f" {next(iter(sorted(models)), 'shop.OrderEvent')!r}."
            )
    default = Policy.parse(raw.get("default"), 'AUDIT_STREAM["RETENTION"]["default"]')
    by_lower = {k.lower(): v for k, v in raw.items()}
    result = {}
    for label in sorted(models):
        if label.lower() in by_lower:
            result[label] = Policy.parse(by_lower[label.lower()], f'AUDIT_STREAM["RETENTION"][{label!r}]')
        else:
            result[label] = default
    result[ROW_LOG] = (
        Policy.parse(raw[ROW_LOG], f'AUDIT_STREAM["RETENTION"][{ROW_LOG!r}]') if ROW_LOG in raw else default
    )
    for key in _SPECIAL:
        result[key] = Policy.parse(raw.get(key, _DEFAULTS.get(key)), f'AUDIT_STREAM["RETENTION"][{key!r}]')
    return result


def describe_policies() -> list[dict]:
    """The policies in force, for the dashboard: ``[{"target", "max_age", "keep_last"}]``."""
    return [{"target": target, **policy.describe()} for target, policy in policies().items()]
