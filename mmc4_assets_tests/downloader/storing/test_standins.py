"""Stand-ins and tiny images within a shard, on hand-made status rows (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from mmc4_assets.corpus.status import normalize_status
from mmc4_assets.downloader.storing.standins import find_standins, known_standin, mark_standins

NOW = datetime(2026, 12, 6, tzinfo=UTC)
STANDIN = "aa" * 32  # one body served under many URLs
PHOTO = "bb" * 32


def row(doc, index, url, body, outcome="ok", size=(400, 300), **extra):
    host = url.split("/")[2]
    return {
        "shard": 1,
        "doc": doc,
        "index": index,
        "image_name": f"{doc}_{index}.jpg",
        "url": url,
        "outcome": outcome,
        "path": f"images/1/{doc}_{index}.jpg" if outcome == "ok" else None,
        "mimetype": "image/jpeg",
        "bytes": 1000,
        "width": size[0],
        "height": size[1],
        "original_width": size[0],
        "original_height": size[1],
        "sha256": body,
        "body_sha256": body,
        "phash": "0123456789abcdef",
        "host": host,
        "fetched_at": NOW,
        "attempts": 1,
        **extra,
    }


def table(rows) -> pd.DataFrame:
    return normalize_status(rows)


def marked(rows, **settings) -> dict[tuple[int, int], str]:
    frame = table(rows)
    verdicts = find_standins(frame, **settings)
    return {
        (int(frame.loc[label, "doc"]), int(frame.loc[label, "index"])): verdict.outcome
        for label, verdict in verdicts.items()
    }


def spread(count, docs, body=STANDIN, host="cdn.example.com", start=0):
    """``count`` distinct URLs of ``host``'s site, over ``docs`` documents, all one body."""
    return [
        row(start + i % docs, i // docs, f"https://{host}/img/{i}.jpg", body) for i in range(count)
    ]


def test_one_body_under_five_urls_of_a_site_from_three_documents():
    assert set(marked(spread(5, 3)).values()) == {"placeholder"} and len(marked(spread(5, 3))) == 5
    assert marked(spread(4, 3)) == {}  # too few URLs
    assert marked(spread(6, 2)) == {}  # too few documents
    assert len(marked(spread(4, 3), min_urls=4)) == 4  # the thresholds are settings
    assert marked(spread(5, 3), min_documents=4) == {}
    assert marked(spread(50, 30), min_urls=0) == {}  # the count off


def test_the_same_url_in_many_documents_is_one_url():
    """A real photo used by ten documents at one URL, another used at two sizes: no stand-in."""
    one_url = [row(doc, 0, "https://news.example.com/photo.jpg", PHOTO) for doc in range(10)]
    assert marked(one_url) == {}
    # One path under several host names and schemes of the site is one URL too (CDN shards).
    mirrored = [
        row(doc, 0, f"{scheme}://i{doc % 4}.wp.com/blog.example/a.jpg", PHOTO)
        for doc, scheme in enumerate(["https", "http"] * 5)
    ]
    assert marked(mirrored) == {}
    # Queries tell URLs apart: a script serving one stand-in for every dead id is caught.
    script = [row(i, 0, f"https://old.example.org/thumb.php?id={i}", STANDIN) for i in range(5)]
    assert len(marked(script)) == 5


def test_counted_per_site():
    """The same body at one URL of each of five sites is not a stand-in of any."""
    rows = [row(i, 0, f"https://site{i}.example/img/{i}.jpg", STANDIN) for i in range(5)]
    assert marked(rows) == {}
    # Host names of one registrable domain are one site.
    rows = [row(i, 0, f"https://h{i}.example.co.uk/x/{i}.png", STANDIN) for i in range(5)]
    assert len(marked(rows)) == 5


def test_known_standin_urls_by_their_final_url():
    removed = "https://i.imgur.com/removed.png"
    flickr = "https://s.yimg.com/pw/images/en-us/photo_unavailable_l.png"
    rows = [
        row(0, 0, "https://i.imgur.com/abc123.jpg", "c1" * 32, final_url=removed),
        row(1, 0, "https://farm4.staticflickr.com/1/2_3.jpg", "c2" * 32, final_url=flickr),
        row(2, 0, removed, "c1" * 32),  # named directly (final_url unknown: an old row)
        row(
            3,
            0,
            "https://i.imgur.com/def456.jpg",
            PHOTO,
            final_url="https://i.imgur.com/def456.jpg",
        ),
        row(
            4,
            0,
            "https://x.example/removed.png",
            "c3" * 32,
            final_url="https://x.example/removed.png",
        ),
    ]
    assert marked(rows) == {(0, 0): "placeholder", (1, 0): "placeholder", (2, 0): "placeholder"}
    assert known_standin("https://www.flickr.com/images/photo_unavailable.gif")
    assert not known_standin("https://i.imgur.com/removedx.png")
    assert not known_standin("not a url") and not known_standin(None)


def test_tiny_images_are_too_small():
    rows = [
        row(0, 0, "https://t.example/pixel.gif", "d1" * 32, size=(1, 1)),
        row(1, 0, "https://t.example/spacer.gif", "d2" * 32, size=(300, 9)),
        row(2, 0, "https://t.example/ten.gif", "d3" * 32, size=(10, 10)),
        # Shrunk from 9000x8 to 800x1: judged by its size as served.
        row(
            3,
            0,
            "https://t.example/banner.png",
            "d4" * 32,
            size=(800, 1),
            original_width=9000,
            original_height=8,
        ),
    ]
    assert marked(rows) == {(0, 0): "too_small", (1, 0): "too_small", (3, 0): "too_small"}
    assert marked(rows, min_side=2) == {(0, 0): "too_small"}
    unknown = row(4, 0, "https://t.example/odd.gif", "d6" * 32, size=(None, 4))
    unknown.update(original_width=None)
    frame = table([unknown])
    assert [v.error for v in find_standins(frame).values()] == ["?x4: a side under 10 px"]
    # A tracking pixel served everywhere is too_small, not placeholder: a property of its own.
    pixels = [row(i, 0, f"https://t.example/p/{i}.gif", "d5" * 32, size=(1, 1)) for i in range(6)]
    assert set(marked(pixels).values()) == {"too_small"}


def test_rows_marked_before_count_and_other_outcomes_are_left_alone():
    rows = spread(5, 5)
    for entry in rows[:3]:
        entry.update(outcome="placeholder", path=None)  # marked by a previous run
    assert marked(rows) == {(3, 0): "placeholder", (4, 0): "placeholder"}
    # Bodies refused (not_image) neither count nor change.
    pages = spread(6, 6, body="ee" * 32)
    for entry in pages:
        entry.update(outcome="not_image", path=None)
    assert marked(pages) == {}
    # A row without a body hash (rebuilt from a file on disk) cannot be told.
    unknown = spread(5, 5)
    for entry in unknown:
        entry.update(body_sha256=None)
    assert marked(unknown) == {}


def test_mark_standins_rows_and_files():
    rows = [*spread(5, 5), row(9, 0, "https://news.example.com/photo.jpg", PHOTO)]
    rows.append(row(10, 0, "https://t.example/pixel.gif", "d1" * 32, size=(1, 1)))
    frame = table(rows)
    out, dropped = mark_standins(frame)
    assert sorted(dropped) == sorted(
        [f"images/1/{i}_0.jpg" for i in range(5)] + ["images/1/10_0.jpg"]
    )
    flagged = out[out.outcome != "ok"]
    assert list(flagged.outcome) == ["placeholder"] * 5 + ["too_small"]
    assert flagged[["path", "bytes", "sha256"]].isna().all().all()
    assert flagged.body_sha256.notna().all() and flagged.phash.notna().all()
    assert (flagged.width.notna() & flagged.mimetype.notna()).all()
    assert "5 URLs of example.com from 5 documents" in flagged.error.iloc[0]
    assert "1x1" in flagged.error.iloc[-1]
    photo = out[out.doc == 9].iloc[0]
    assert photo.outcome == "ok" and photo.path == "images/1/9_0.jpg" and photo.bytes == 1000
    assert frame.outcome.eq("ok").all()  # the input is left as it was
    empty = table([])
    assert mark_standins(empty) == (empty, [])


def test_bodies_of_the_corpus_index_are_placeholder_even_at_one_url():
    thin = "cc" * 32
    rows = [
        row(0, 0, "https://a.example/1.jpg", thin),
        row(1, 0, "https://b.example/2.jpg", thin, outcome="not_image"),  # not an ok row: left
        row(2, 0, "https://c.example/3.jpg", PHOTO),
        row(3, 0, "https://t.example/pixel.gif", thin, size=(1, 1)),  # tiny first
        *spread(5, 3, start=4),  # counted in the shard: its own reason
    ]
    known = frozenset({thin, STANDIN})
    assert marked(rows[:3]) == {}
    frame = table(rows)
    verdicts = find_standins(frame, known_bodies=known)
    why = {int(frame.loc[label, "doc"]): verdict for label, verdict in verdicts.items()}
    assert why[0].outcome == "placeholder" and why[0].error == "stand-in: in the corpus index"
    assert 1 not in why and 2 not in why
    assert why[3].outcome == "too_small"
    assert all("URLs of example.com" in why[doc].error for doc in (4, 5, 6))
    out, dropped = mark_standins(frame, known_bodies=known)
    assert "images/1/0_0.jpg" in dropped
    assert out.loc[out.doc == 0, "outcome"].item() == "placeholder"
