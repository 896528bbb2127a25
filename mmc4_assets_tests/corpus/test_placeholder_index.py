"""The corpus stand-in index, built from hand-made status tables."""

from __future__ import annotations

import hashlib
import random
import re

import pyarrow as pa
import pytest

from mmc4_assets.corpus.placeholder_index import (
    _URL_PREFIX,
    INDEX_SCHEMA,
    build_placeholder_index,
    standin_bodies,
)

STANDIN = hashlib.sha256(b"a 'no hotlinking' picture").hexdigest()
PHOTO = hashlib.sha256(b"a real photo").hexdigest()


def body(seed: object) -> str:
    return hashlib.sha256(str(seed).encode()).hexdigest()


def status_table(shard: int, rows: list[tuple[str, str, str | None]]) -> pa.Table:
    """A status table's index columns: rows of (url, outcome, body_sha256)."""
    return pa.table(
        {
            "shard": pa.array([shard] * len(rows), pa.int64()),
            "url": pa.array([url for url, _, _ in rows], pa.string()),
            "outcome": pa.array([outcome for _, outcome, _ in rows], pa.string()),
            "body_sha256": pa.array([sha for _, _, sha in rows], pa.string()),
        }
    )


def photos(shard: int, count: int = 50) -> list[tuple[str, str, str]]:
    """Ordinary images: each its own body at its own URL."""
    return [
        (f"https://photos.example/{shard}/{n}.jpg", "ok", body((shard, n))) for n in range(count)
    ]


def as_dict(index: pa.Table) -> dict[str, dict]:
    return {row["body_sha256"]: row for row in index.to_pylist()}


def test_a_thin_standin_is_caught_and_a_photo_in_many_shards_is_not():
    tables = []
    for shard in range(5):  # 2 or 3 URLs per shard: too few for the within-shard rule
        thin = [
            (f"https://hotlink.example/{shard}/{n}.jpg", "ok", STANDIN)
            for n in range(2 + shard % 2)
        ]
        tables.append(status_table(shard, photos(shard) + thin))
    for shard in range(5, 25):  # one real photo at one URL, in 20 shards, twice in each
        again = [("https://news.example/famous.jpg", "ok", PHOTO)] * 2
        tables.append(status_table(shard, photos(shard) + again))
    index = build_placeholder_index(tables)
    assert index.schema == INDEX_SCHEMA
    assert index.num_rows == 1
    row = index.to_pylist()[0]
    assert row["body_sha256"] == STANDIN
    assert row["urls"] == 12
    assert row["shards"] == 5
    assert row["example_url"].startswith("https://hotlink.example/")
    assert standin_bodies(index) == {STANDIN}


def test_a_url_in_several_shards_counts_once():
    urls = [f"https://cdn.example/{n}.png" for n in range(9)]
    tables = [status_table(shard, [(url, "ok", STANDIN) for url in urls]) for shard in range(6)]
    assert build_placeholder_index(tables).num_rows == 0  # 9 URLs, 54 rows
    tables.append(status_table(6, [("https://cdn.example/9.png", "placeholder", STANDIN)]))
    assert as_dict(build_placeholder_index(tables))[STANDIN]["urls"] == 10


def test_scheme_and_www_do_not_make_another_url():
    rows = []
    for n in range(6):
        rows.append((f"http://www.cdn.example/{n}.gif", "ok", STANDIN))
        rows.append((f"https://cdn.example/{n}.gif", "ok", STANDIN))
    assert build_placeholder_index([status_table(1, rows)]).num_rows == 0
    index = build_placeholder_index([status_table(1, rows)], min_urls=6)
    assert as_dict(index)[STANDIN]["urls"] == 6


def test_only_ok_and_placeholder_rows_count():
    rows = [(f"https://a.example/{n}", "ok", STANDIN) for n in range(4)]
    rows += [(f"https://a.example/p{n}", "placeholder", STANDIN) for n in range(4)]
    rows += [(f"https://a.example/x{n}", "not_image", STANDIN) for n in range(5)]
    rows += [(f"https://a.example/y{n}", "too_small", STANDIN) for n in range(5)]
    rows += [(f"https://a.example/z{n}", "timeout", None) for n in range(5)]
    assert build_placeholder_index([status_table(3, rows)]).num_rows == 0
    assert as_dict(build_placeholder_index([status_table(3, rows)], min_urls=8))[STANDIN]["urls"]


def test_tables_without_fingerprints_and_malformed_hashes_are_skipped():
    old = pa.table({"shard": [1], "url": ["https://a.example/1"], "outcome": ["ok"]})
    malformed = status_table(2, [(f"https://a.example/{n}", "ok", "not-a-hash") for n in range(12)])
    upper = status_table(3, [(f"https://b.example/{n}", "ok", STANDIN.upper()) for n in range(10)])
    empty = status_table(4, [])
    index = build_placeholder_index([old, malformed, upper, empty])
    assert as_dict(index) == {
        STANDIN: {
            "body_sha256": STANDIN,
            "urls": 10,
            "shards": 1,
            "example_url": "https://b.example/0",
        }
    }


def brute_force(tables: list[pa.Table], min_urls: int) -> dict[str, tuple[int, int]]:
    prefix = re.compile(_URL_PREFIX.removeprefix("(?i)"), re.I)
    urls: dict[str, set] = {}
    shards: dict[str, set] = {}
    for table in tables:
        for row in table.to_pylist():
            if row["outcome"] in ("ok", "placeholder") and row["body_sha256"]:
                key = prefix.sub("", row["url"], count=1)
                urls.setdefault(row["body_sha256"], set()).add(key)
                shards.setdefault(row["body_sha256"], set()).add(row["shard"])
    return {sha: (len(u), len(shards[sha])) for sha, u in urls.items() if len(u) >= min_urls}


@pytest.mark.parametrize("sketch_bits", [2, 16])
def test_the_index_is_exact_whatever_the_sketch_lets_through(sketch_bits):
    """With 4 counters every body passes the sketch: the exact count alone decides."""
    rng = random.Random(5)
    standins = [body(f"standin {n}") for n in range(6)]
    tables = []
    for shard in range(30):
        rows = photos(shard, 40)
        for _ in range(rng.randint(0, 6)):  # some stand-ins much more common than others
            [standin] = rng.choices(standins, weights=[20, 10, 2, 1, 1, 1])
            rows.append((f"https://s.example/{rng.randint(0, 40)}", "ok", standin))
        tables.append(status_table(shard, rows))
    expected = brute_force(tables, 10)
    assert expected  # some of the stand-ins reach 10 URLs, not all
    assert len(expected) < len(standins)
    index = build_placeholder_index(tables, sketch_bits=sketch_bits)
    found = {row["body_sha256"]: (row["urls"], row["shards"]) for row in index.to_pylist()}
    assert found == expected
    assert index["urls"].to_pylist() == sorted(index["urls"].to_pylist(), reverse=True)


def test_it_refuses_a_one_shot_iterator_and_bad_thresholds():
    with pytest.raises(TypeError, match="re-iterable"):
        build_placeholder_index(iter([status_table(1, photos(1))]))
    with pytest.raises(ValueError, match="min_urls"):
        build_placeholder_index([], min_urls=0)
    assert build_placeholder_index([]).num_rows == 0
