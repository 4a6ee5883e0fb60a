"""The documentation site builds in strict mode: every README link points somewhere."""

import subprocess
import sys

from tests.procs import ROOT


def test_the_docs_build_in_strict_mode(tmp_path):
    """README sections, RELIABILITY.md, BENCHMARKS.md and docs/ become pages; a broken link fails."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    pages = {p.parent.name for p in (tmp_path / "site").glob("*/index.html")}
    assert {
        "installation",
        "upgrading",
        "context",
        "stream",
        "settings",
        "deployment",
        "reliability",
    } <= pages
    assert "Coming from django-pghistory" in (tmp_path / "site" / "upgrading" / "index.html").read_text()
