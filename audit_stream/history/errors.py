"""The error of a write to history."""

from __future__ import annotations

__all__ = ["ReadOnlyHistoryError"]


class ReadOnlyHistoryError(TypeError):
    """A write through an as-of instance or QuerySet: the past cannot be changed."""
