"""BENCHMARKS.md is shared by every benchmark: each one rewrites only its own ``##`` section."""

from __future__ import annotations

import re
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def replace_section(heading: str, section: str, path: Path = BENCHMARKS_MD) -> None:
    """Put ``section`` in place of the one under ``heading`` (or append it), keeping the rest.

    The file is read right before writing: other benchmarks may have rewritten
    their own sections meanwhile.
    """
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    block = section.rstrip() + "\n\n"
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + block
    path.write_text(text.rstrip() + "\n")
