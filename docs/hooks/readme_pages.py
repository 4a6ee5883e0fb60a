"""MkDocs hook: the README's sections, RELIABILITY.md and BENCHMARKS.md become pages of the site.

README.md is the entry point and stays the one source of the text: its
introduction becomes the home page and each "## " section a page of its own,
in README order, with headings raised one level and links between sections
pointed at the page that now holds them. Pages written in ``docs/`` (such as
``deployment.md``) are listed after them. A README link that points nowhere
fails the strict build.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]

# Page file names for the README's sections (a task page each, as in django-pghistory's
# docs); a section not listed here gets a name made from its title.
_NAMES = {
    "Installation": "installation.md",
    "Coming from django-pghistory": "upgrading.md",
    "Usage": "basics.md",
    "Context: who and why": "context.md",
    "Reading history: AggregateEvent, the admin, revert and restore": "history.md",
    "Schema-wide logging: `initlogging` (no model changes)": "logging.md",
    "The stream: change feed": "stream.md",
    "Webhooks": "webhooks.md",
    "The operator dashboard": "dashboard.md",
    "Retention": "retention.md",
    "Settings": "settings.md",
    "How it compares": "comparison.md",
    "Development": "development.md",
}
_WHOLE_FILES = {"RELIABILITY.md": "reliability.md", "BENCHMARKS.md": "benchmarks.md"}
_FENCE = re.compile(r"^\s*(```|~~~)")


def _slug(title: str) -> str:
    """The anchor GitHub and MkDocs give a heading."""
    text = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return re.sub(r"\s", "-", text)


def _outside_code(lines: list[str]):
    """Yield (index, line, in_code) for each line, tracking fenced code blocks."""
    in_code = False
    for index, line in enumerate(lines):
        if _FENCE.match(line):
            in_code = not in_code
            yield index, line, True
            continue
        yield index, line, in_code


def _sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The README's introduction, and its "## " sections as (title, text)."""
    lines = text.splitlines()
    starts = [
        (i, line[3:].strip()) for i, line, code in _outside_code(lines) if not code and line.startswith("## ")
    ]
    if not starts:
        raise PluginError("README.md has no '## ' section.")
    intro = "\n".join(lines[: starts[0][0]])
    sections = []
    for n, (start, title) in enumerate(starts):
        end = starts[n + 1][0] if n + 1 < len(starts) else len(lines)
        sections.append((title, "\n".join(lines[start:end])))
    return intro, sections


def _raise_headings(text: str) -> str:
    lines = text.splitlines()
    for i, line, code in _outside_code(lines):
        if not code and line.startswith("##"):
            lines[i] = line[1:]
    return "\n".join(lines) + "\n"


def _pages() -> list[tuple[str, str, str]]:
    """(file name, nav title, markdown) of every generated page."""
    intro, sections = _sections((ROOT / "README.md").read_text())
    names = {title: _NAMES.get(title) or _slug(title).strip("-") + ".md" for title, _ in sections}
    # Which page holds each anchor of the README, to point links between sections there.
    anchors: dict[str, str] = {}
    for title, body in sections:
        for _, line, code in _outside_code(body.splitlines()):
            if not code and line.startswith("#"):
                anchors[_slug(line.lstrip("#"))] = names[title]

    def links(markdown: str, page: str) -> str:
        for source, target in {**_WHOLE_FILES, "README.md": "index.md"}.items():
            markdown = markdown.replace(f"]({source})", f"]({target})").replace(
                f"]({source}#", f"]({target}#"
            )
        # The README links to pages written in docs/ by their path in the repository.
        markdown = markdown.replace("](docs/", "](")

        def anchor(match: re.Match) -> str:
            slug = match.group(1)
            if slug not in anchors:
                raise PluginError(f"README.md links to #{slug}, which no heading has.")
            target = anchors[slug]
            return f"](#{slug})" if target == page else f"]({target}#{slug})"

        return re.sub(r"\]\(#([^)]+)\)", anchor, markdown)

    pages = [("index.md", "Home", links(intro, "index.md"))]
    for title, body in sections:
        pages.append((names[title], title.replace("`", ""), links(_raise_headings(body), names[title])))
    for source, name in _WHOLE_FILES.items():
        title = source.removesuffix(".md").capitalize()
        pages.append((name, title, links((ROOT / source).read_text(), name)))
    return pages


def on_config(config):
    pages = _pages()
    written = sorted(p.relative_to(config.docs_dir).as_posix() for p in Path(config.docs_dir).glob("*.md"))
    generated = {name for name, _, _ in pages}
    clash = generated & set(written)
    if clash:
        raise PluginError(f"docs/ has pages the README generates: {', '.join(sorted(clash))}.")
    config.nav = [{title: name} for name, title, _ in pages[:-2]]
    config.nav += [{Path(name).stem.capitalize(): name} for name in written]
    config.nav += [{title: name} for name, title, _ in pages[-2:]]
    return config


def on_files(files, config):
    for name, _, markdown in _pages():
        files.append(File.generated(config, name, content=markdown))
    return files
