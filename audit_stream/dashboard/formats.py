"""How figures read on the pages: durations, counts, percentages, JSON values."""

from __future__ import annotations

import re

from audit_stream import exact

__all__ = ["age", "count", "duration", "percent", "value"]


def duration(seconds: float | None) -> str:
    """``0.85`` -> ``"850 ms"``, ``75`` -> ``"1 min 15 s"``, ``90000`` -> ``"1 d 1 h"``, ``None`` -> "—"."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{max(seconds, 0) * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{int(seconds)} s"
    whole = int(seconds)
    for unit, size, sub_unit, sub_size in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "min", 60),
        ("min", 60, "s", 1),
    ):
        if whole >= size:
            rest = (whole % size) // sub_size
            return f"{whole // size} {unit} {rest} {sub_unit}" if rest else f"{whole // size} {unit}"
    return f"{whole} s"  # pragma: no cover


def age(text: str | None) -> str:
    """A policy's ``max_age``: ``"7776000s"`` -> ``"90 d"``, other spellings as given, ``None``: forever."""
    if text is None:
        return "forever"
    if re.fullmatch(r"\d+s", text):
        return duration(int(text[:-1]))
    return text


def count(number: int | None, estimated: bool = False) -> str:
    """``1234567`` -> ``"1,234,567"``; an estimate reads ``"≈ 1,234,567"``."""
    if number is None:
        return "—"
    return ("≈ " if estimated else "") + f"{number:,}"


def percent(ratio: float | None) -> str:
    """``0.9876`` -> ``"98.8%"``; ``None`` (nothing to measure) -> ``"—"``."""
    return "—" if ratio is None else f"{ratio * 100:.1f}%"


def value(data: object) -> str:
    """A JSON value of a diff as text: strings as they are, decimals exactly, the rest as JSON."""
    if isinstance(data, str):
        return data
    return exact.dumps(data)
