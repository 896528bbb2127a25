"""The README and the guides in docs/ say only what the repository holds.

The README's Layout names paths that exist; every relative link of the README and of docs/*.md
points to a file (and, for a `#section`, to a heading of it) that exists; the README stays short,
with its two commands at the top.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mmc4_assets_tests.support.instance_files import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
DOCS = sorted((PROJECT_ROOT / "docs").glob("*.md"))
MAX_README_LINES = 160


def layout_block(text: str) -> list[str]:
    """The lines of the first fenced block under the `## Layout` heading."""
    section = text.split("\n## Layout\n", 1)[1]
    block = re.search(r"^```[^\n]*\n(.*?)^```", section, re.S | re.M)
    assert block, "no fenced block under ## Layout"
    return block.group(1).splitlines()


def layout_paths(lines: list[str]) -> list[str]:
    """The paths a layout block names, each resolved against the folders it is indented under.

    A line is `names  description`: one or more names separated by single spaces, then (after
    two spaces or more) an optional description. A deeper-indented line lives in the nearest
    folder (a name ending in `/`) above it with less indentation.
    """
    paths: list[str] = []
    parents: list[tuple[int, str]] = []  # (indent, folder path ending in /)
    for line in lines:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        names = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0].split()
        while parents and parents[-1][0] >= indent:
            parents.pop()
        if indent and not parents:
            raise AssertionError(f"indented line with no folder above it: {line!r}")
        base = parents[-1][1] if parents else ""
        for name in names:
            paths.append(base + name)
        if len(names) == 1 and names[0].endswith("/"):
            parents.append((indent, base + names[0]))
    return paths


def test_layout_parser_resolves_nesting_and_several_names():
    lines = [
        "pkg/            the package",
        "  a.py b.py",
        "  sub/          a folder",
        "    c.py        in it",
        "  d.py          back in pkg",
        "top.txt",
    ]
    assert layout_paths(lines) == [
        "pkg/",
        "pkg/a.py",
        "pkg/b.py",
        "pkg/sub/",
        "pkg/sub/c.py",
        "pkg/d.py",
        "top.txt",
    ]


def test_every_layout_path_exists():
    paths = layout_paths(layout_block(README.read_text()))
    assert len(paths) > 10
    missing = []
    for path in paths:
        target = PROJECT_ROOT / path
        if not target.exists() or (path.endswith("/") and not target.is_dir()):
            missing.append(path)
    assert not missing, f"the README's Layout names paths that do not exist: {missing}"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip())
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, re.M):
        anchor, n = github_anchor(heading), 0
        while (anchor if n == 0 else f"{anchor}-{n}") in found:
            n += 1
        found.add(anchor if n == 0 else f"{anchor}-{n}")
    return found


def test_github_anchor():
    assert github_anchor("Politeness: sites, budgets shared by every run, robots.txt") == (
        "politeness-sites-budgets-shared-by-every-run-robotstxt"
    )
    assert github_anchor("bench_imaging.py: CPU per image") == "bench_imagingpy-cpu-per-image"
    assert github_anchor("The image library: Pillow-SIMD") == "the-image-library-pillow-simd"


def relative_links(path: Path) -> list[str]:
    """The targets of the file's markdown links that are neither URLs nor mail addresses
    (code blocks and inline code left out)."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I)]


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_relative_links_point_to_existing_files(path: Path):
    broken = []
    for link in relative_links(path):
        file_part, _, anchor = link.partition("#")
        target = (path.parent / file_part).resolve() if file_part else path
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link}: no such heading in {target.name}")
    assert not broken, f"{path.relative_to(PROJECT_ROOT)}: {broken}"


def test_docs_exist_and_the_index_names_every_one():
    names = {path.name for path in DOCS}
    assert {"README.md", "contracts.md", "downloader.md", "politeness.md"} <= names
    index = (PROJECT_ROOT / "docs" / "README.md").read_text()
    assert not [name for name in names - {"README.md"} if f"]({name})" not in index]


def test_readme_is_short_with_its_two_commands_at_the_top():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES
    top = "\n".join(lines[:15])
    assert "make demo" in top and "make test" in top
