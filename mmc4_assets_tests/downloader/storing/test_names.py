"""Hostile or clashing image names never escape the shard folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmc4_assets.downloader.storing.names import (
    NameAllocator,
    contained_path,
    derived_name,
    is_safe_name,
)

URL = "https://example.com/pics/cat.PNG?x=1"


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "/abs",
        "a/b",
        "a\\b",
        "..",
        ".",
        "",
        ".hidden",
        "a\x00b",
        "tab\there",
        "x" * 300,
        "spa ce.jpg",
        "ünï.jpg",
        "C:evil",
        "a..b.jpg",
    ],
)
def test_hostile_names_are_replaced(name):
    assert not is_safe_name(name)
    safe = NameAllocator().allocate(name, URL, 0, 0)
    assert is_safe_name(safe)
    assert safe == derived_name(URL, name)


def test_plain_names_are_kept():
    names = NameAllocator()
    assert names.allocate("3f2a9c.jpg", URL, 0, 0) == "3f2a9c.jpg"
    assert names.allocate("photo_1-final.webp", URL, 0, 1) == "photo_1-final.webp"


def test_extension_comes_from_name_then_url():
    assert derived_name(URL, "../x.gif").endswith(".gif")
    assert derived_name(URL, "..").endswith(".png")
    assert derived_name("https://example.com/noext", "").endswith(".jpg")


def test_duplicates_get_distinct_deterministic_names():
    def run():
        names = NameAllocator()
        return [
            names.allocate("same.jpg", URL, 0, 0),
            names.allocate("same.jpg", URL, 1, 0),
            names.allocate("SAME.jpg", URL, 2, 0),
            names.allocate("same.jpg", "https://example.com/other.jpg", 3, 0),
        ]

    first = run()
    assert len(set(first)) == 4 and first[0] == "same.jpg"
    assert run() == first


def test_contained_path(tmp_path: Path):
    assert contained_path(tmp_path, "a.jpg") == (tmp_path / "a.jpg").resolve()
    for bad in ("../a.jpg", "/etc/passwd", "sub/a.jpg"):
        with pytest.raises(ValueError):
            contained_path(tmp_path, bad)
