"""Duplicates within a shard, from the rows alone: exact (one body), near (one picture)."""

from __future__ import annotations

import pandas as pd

from mmc4_assets.downloader.storing.duplicates import (
    by_site,
    duplicate_counts,
    find_duplicates,
    mark_duplicates,
)

PHOTO = "c3a5969a3a5a2d1e"
PHOTO_RESIZED = "c3a5969a3a5a2d1f"  # one bit off: the same picture, shrunk
PHOTO_RECOLOURED = "c3a5969a3a5a2d11"  # four bits off
OTHER = "3c5a6965c5a5d2e1"  # another photo: far away


def rows(*images: tuple) -> pd.DataFrame:
    """(doc, index, outcome, body, phash) per image."""
    return pd.DataFrame(
        [
            {
                "doc": doc, "index": index, "image_name": f"{doc}-{index}.jpg",
                "outcome": outcome, "body_sha256": body, "phash": phash,
            }
            for doc, index, outcome, body, phash in images
        ]
    )  # fmt: skip


def test_the_first_is_the_original_and_later_copies_name_it():
    table = rows(
        (2, 0, "ok", "b1", PHOTO),  # listed first, but doc 2 comes after doc 0
        (0, 0, "ok", "b1", PHOTO),  # the original: the earliest (doc, index)
        (0, 1, "ok", "b2", PHOTO_RESIZED),  # near: another body, one bit off
        (1, 0, "ok", "b3", OTHER),
        (1, 1, "ok", "b4", PHOTO_RECOLOURED),  # four bits off: still near at the default
        (3, 0, "placeholder", "b1", PHOTO),  # not an image of the page: never a duplicate
        (3, 1, "http_error", None, None),
    )
    found = find_duplicates(table)
    assert {table.image_name[label]: of for label, of in found.items()} == {
        "2-0.jpg": "0-0.jpg",
        "0-1.jpg": "0-0.jpg",
        "1-1.jpg": "0-0.jpg",
    }
    marked = mark_duplicates(table)
    assert marked["duplicate_of"].notna().sum() == 3
    assert duplicate_counts(marked) == (1, 2)


def test_the_distance_is_a_setting_and_minus_one_keeps_exact_copies_only():
    table = rows(
        (0, 0, "ok", "b1", PHOTO),
        (0, 1, "ok", "b2", PHOTO_RESIZED),
        (0, 2, "ok", "b3", PHOTO_RECOLOURED),
        (0, 3, "ok", "b1", PHOTO),
    )
    names = lambda found: sorted(table.image_name[label] for label in found)  # noqa: E731
    assert names(find_duplicates(table, max_distance=1)) == ["0-1.jpg", "0-3.jpg"]
    assert names(find_duplicates(table, max_distance=-1)) == ["0-3.jpg"]
    assert names(find_duplicates(table, max_distance=4)) == ["0-1.jpg", "0-2.jpg", "0-3.jpg"]


def test_different_photos_and_rows_without_fingerprints_are_no_duplicates():
    table = rows(
        (0, 0, "ok", "b1", PHOTO),
        (0, 1, "ok", "b2", OTHER),
        (0, 2, "ok", None, None),  # rebuilt from a file without its hash
        (0, 3, "ok", None, None),
    )
    assert find_duplicates(table) == {}
    assert duplicate_counts(mark_duplicates(table)) == (0, 0)
    empty = pd.DataFrame(columns=["doc", "index", "image_name", "outcome", "body_sha256", "phash"])
    assert find_duplicates(empty) == {}


def test_a_crowded_band_finds_its_match_among_the_first_holders():
    """Many distinct images sharing a band are compared with the first few only; a copy of
    the first is still found."""
    base = int(PHOTO, 16)
    crowd = [
        (0, i, "ok", f"b{i}", f"{base ^ (0b11111 << (59 - (i % 50))):016x}") for i in range(300)
    ]
    table = rows((0, -1, "ok", "first", PHOTO), *crowd, (1, 0, "ok", "copy", PHOTO_RESIZED))
    found = find_duplicates(table, max_distance=1)
    copy = table.index[table.image_name == "1-0.jpg"][0]
    assert found[copy] == "0--1.jpg"


def test_stand_ins_and_duplicates_are_counted_per_site():
    table = rows(
        (0, 0, "ok", "b1", PHOTO),
        (0, 1, "ok", "b1", PHOTO),  # exact
        (1, 0, "ok", "b2", PHOTO_RESIZED),  # near
        (1, 1, "placeholder", "b9", None),
        (2, 0, "ok", "b3", OTHER),
    )
    table["host"] = ["i0.wp.com", "i1.wp.com", "lh3.googleusercontent.com", "i2.wp.com", "x.org"]
    assert by_site(mark_duplicates(table)) == [
        {"site": "wp.com", "placeholder": 1, "exact_duplicates": 1, "near_duplicates": 0},
        {
            "site": "googleusercontent.com",
            "placeholder": 0,
            "exact_duplicates": 0,
            "near_duplicates": 1,
        },
    ]
