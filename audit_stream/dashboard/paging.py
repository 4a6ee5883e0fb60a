"""Keyset pages of the dashboard's lists: newest first, continued with ``?before=``, never ``OFFSET``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PAGE_SIZE", "Page"]

#: Rows per page of the message and change lists.
PAGE_SIZE = 50


@dataclass
class Page:
    """One page of a keyset-paginated list, newest first."""

    items: list
    older: str | None  # the ?before= cursor of the next (older) page, if there is one
    is_first: bool
