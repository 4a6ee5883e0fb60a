"""The commands' progress bars: one bar per table (or model), advanced by a ``progress`` callback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["bars"]


@contextmanager
def bars(console: Console) -> Iterator[Callable[[str, int, int], None]]:
    """Yield ``progress(name, done, total)``: the bar named ``name`` (made at its first call) shows ``done``
    of ``total``. The bars are transient: gone from the terminal once the block ends."""
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    ) as bar:  # fmt: skip
        tasks: dict[str, int] = {}

        def progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done, total=total)

        yield progress
