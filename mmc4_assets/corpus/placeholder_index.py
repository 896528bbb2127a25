"""The corpus stand-in index: bodies served under many distinct URLs across every shard.

A stand-in spread thinly (two or three URLs per shard) escapes the within-shard rule
(``downloader/storing/standins.py``); over the corpus it does not. ``build_placeholder_index``
takes the status tables (pyarrow Tables with at least ``url``, ``outcome``, ``body_sha256``,
``shard``; no I/O here) and returns every body hash seen under at least ``min_urls`` distinct URLs,
counting rows ``ok`` or ``placeholder``, with its URL count, shard count and an example URL.

At corpus scale (23,085 shards, about 300M distinct bodies) no per-body state fits in memory, so
it takes two streaming passes over the tables (they must be re-iterable, e.g. a list or an object
whose ``__iter__`` reads them again):

1. A count-min sketch (two rows of saturating uint8 counters, indexed by two 64-bit words of the
   body's SHA-256, which is uniform already) counts each body's rows. It only over-counts (a URL
   repeated, in one shard or several; hash collisions), so every body with ``min_urls`` distinct
   URLs passes it, and few others do: bodies at many URLs, or at one URL many times.
2. The rows of the bodies that pass are kept as distinct (body, URL hash, shard) triples (the
   body as 32-byte fixed-width binary, the URL as a 64-bit hash), compacted as they grow, and
   counted exactly at the end: a URL repeated in several shards counts once. Only these rows'
   URLs are hashed.

A URL counts without its scheme and a leading ``www.`` (``http://www.a.org/x`` and
``https://a.org/x`` are one URL); otherwise as written.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

COUNTED_OUTCOMES = ("ok", "placeholder")
DEFAULT_MIN_URLS = 10
INDEX_SCHEMA = pa.schema(
    [
        pa.field("body_sha256", pa.string(), nullable=False),
        pa.field("urls", pa.int64(), nullable=False),
        pa.field("shards", pa.int64(), nullable=False),
        pa.field("example_url", pa.string(), nullable=False),
    ]
)
_URL_PREFIX = r"(?i)^[a-z][a-z0-9+.-]*://(www\.)?"
_COMPACT_ROWS = 2_000_000
_MAX_WIDTH_BITS = 28  # two rows of 256 MiB: the full corpus's ~370M pairs, ~1 per counter
_MIN_WIDTH_BITS = 16
_ROWS_PER_TABLE = 20_000  # a shard holds about 16,000 images
_HEX = np.full(256, 255, dtype=np.uint8)
for _digit, _value in zip(b"0123456789abcdef", range(16), strict=True):
    _HEX[_digit] = _value
for _digit, _value in zip(b"ABCDEF", range(10, 16), strict=True):
    _HEX[_digit] = _value


def _hex_to_binary(hashes: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """64-hex-digit strings (no nulls) as an (n, 32) uint8 array, and which were well-formed."""
    if pa.types.is_large_string(hashes.type):
        hashes = pc.cast(hashes, pa.string())
    count = len(hashes)
    if count == 0:
        return np.zeros((0, 32), np.uint8), np.zeros(0, bool)
    lengths = pc.binary_length(hashes).to_numpy(zero_copy_only=False)
    well_sized = lengths == 64
    if not well_sized.all():
        hashes = pc.if_else(pa.array(well_sized), hashes, "0" * 64)
    # Every value is 64 bytes now, so the values lie back to back from the first offset on.
    offsets = np.frombuffer(hashes.buffers()[1], np.int32, count + 1, hashes.offset * 4)
    data = np.frombuffer(hashes.buffers()[2], np.uint8, 64 * count, int(offsets[0]))
    nibbles = _HEX[data.reshape(count, 64)]
    valid = well_sized & (nibbles != 255).all(axis=1)
    return (nibbles[:, 0::2] << 4) | nibbles[:, 1::2], valid


def _url_hashes(urls: pa.Array) -> np.ndarray:
    """A 64-bit hash of each URL's key (no scheme, no leading www.)."""
    keys = pc.replace_substring_regex(urls, _URL_PREFIX, "", max_replacements=1)
    return pd.util.hash_array(keys.to_numpy(zero_copy_only=False), categorize=False)


class _Rows:
    """One table's counted rows: body (n, 32) uint8, shards and URLs (pyarrow)."""

    def __init__(self, table: pa.Table) -> None:
        names = set(table.column_names)
        self.empty = not {"url", "outcome", "body_sha256", "shard"} <= names or table.num_rows == 0
        if self.empty:
            return
        counted = pc.and_(
            pc.is_in(table["outcome"], value_set=pa.array(COUNTED_OUTCOMES)),
            pc.is_valid(table["body_sha256"]),
        )
        counted = pc.and_(counted, pc.is_valid(table["url"]))
        kept = table.select(["url", "body_sha256", "shard"]).filter(pc.fill_null(counted, False))
        body, valid = _hex_to_binary(kept["body_sha256"].combine_chunks())
        self.body = body[valid]
        self.urls = kept["url"].combine_chunks().filter(pa.array(valid))
        self.shard = pc.cast(kept["shard"].combine_chunks(), pa.int64()).filter(pa.array(valid))
        self.empty = len(self.body) == 0

    def words(self) -> np.ndarray:
        """The body's first two 64-bit words (n, 2): the sketch's indices."""
        return np.ascontiguousarray(self.body[:, :16]).view(np.uint64).reshape(-1, 2)


class _Sketch:
    """Two rows of saturating uint8 counters of each body's rows (a row per URL at least)."""

    def __init__(self, width_bits: int) -> None:
        self.mask = np.uint64((1 << width_bits) - 1)
        self.rows = np.zeros((2, 1 << width_bits), dtype=np.uint8)

    def add(self, rows: _Rows) -> None:
        words = rows.words()
        for row in range(2):
            slots, counts = np.unique(words[:, row] & self.mask, return_counts=True)
            total = self.rows[row, slots].astype(np.int64) + counts
            self.rows[row, slots] = np.minimum(total, 255).astype(np.uint8)

    def passes(self, rows: _Rows, min_urls: int) -> np.ndarray:
        words = rows.words()
        first = self.rows[0, words[:, 0] & self.mask]
        second = self.rows[1, words[:, 1] & self.mask]
        return np.minimum(first, second) >= min_urls


def _width_bits(tables: Iterable[pa.Table]) -> int:
    """Counters per row: about one per expected row, within [2^16, 2^28]."""
    try:
        expected = max(1, len(tables)) * _ROWS_PER_TABLE  # type: ignore[arg-type]
    except TypeError:
        return _MAX_WIDTH_BITS
    return int(min(_MAX_WIDTH_BITS, max(_MIN_WIDTH_BITS, int(np.ceil(np.log2(expected))))))


class _Candidates:
    """Distinct (body, URL hash, shard) triples of the bodies that passed the sketch."""

    def __init__(self) -> None:
        self.parts: list[pa.Table] = []
        self.pending = 0
        self.examples: dict[bytes, str] = {}

    def add(self, rows: _Rows, mask: np.ndarray) -> None:
        if not mask.any():
            return
        body = rows.body[mask]
        urls = rows.urls.filter(pa.array(mask))
        part = pa.table(
            {
                "body": pa.FixedSizeBinaryArray.from_buffers(
                    pa.binary(32), len(body), [None, pa.py_buffer(body.tobytes())]
                ),
                "url_hash": pa.array(_url_hashes(urls), pa.uint64()),
                "shard": rows.shard.filter(pa.array(mask)),
            }
        )
        keys = np.ascontiguousarray(body).view(np.dtype((np.void, 32))).ravel()
        _, first = np.unique(keys, return_index=True)  # one example per body of the table
        for row in first.tolist():
            self.examples.setdefault(keys[row].tobytes(), urls[row].as_py())
        self.parts.append(part)
        self.pending += len(part)
        if self.pending >= _COMPACT_ROWS:
            self.compact()

    def compact(self) -> pa.Table:
        table = pa.concat_tables(self.parts) if self.parts else _empty_triples()
        table = table.group_by(["body", "url_hash", "shard"]).aggregate([])
        self.parts, self.pending = [table], 0
        return table


def _empty_triples() -> pa.Table:
    schema = pa.schema([("body", pa.binary(32)), ("url_hash", pa.uint64()), ("shard", pa.int64())])
    return schema.empty_table()


def build_placeholder_index(
    tables: Iterable[pa.Table], *, min_urls: int = DEFAULT_MIN_URLS, sketch_bits: int | None = None
) -> pa.Table:
    """The corpus stand-in index (``INDEX_SCHEMA``), most URLs first.

    ``tables`` is read twice (it must not be a one-shot iterator); ``min_urls``: 1 to 255;
    ``sketch_bits``: log2 of the counters per sketch row (default: from ``len(tables)``, at most
    28). A smaller sketch lets more bodies through to the exact count, never fewer."""
    if iter(tables) is tables:
        raise TypeError("build_placeholder_index reads the tables twice: pass a re-iterable")
    if not 1 <= min_urls <= 255:
        raise ValueError(f"min_urls must be between 1 and 255, not {min_urls}")
    sketch = _Sketch(sketch_bits or _width_bits(tables))
    for table in tables:
        rows = _Rows(table)
        if not rows.empty:
            sketch.add(rows)
    candidates = _Candidates()
    for table in tables:
        rows = _Rows(table)
        if not rows.empty:
            candidates.add(rows, sketch.passes(rows, min_urls))
    del sketch
    return _index(candidates, min_urls)


def _index(candidates: _Candidates, min_urls: int) -> pa.Table:
    counts = (
        candidates.compact()
        .group_by("body")
        .aggregate([("url_hash", "count_distinct"), ("shard", "count_distinct")])
    )
    counts = counts.filter(pc.greater_equal(counts["url_hash_count_distinct"], min_urls))
    bodies = counts["body"].to_pylist()
    index = pa.table(
        {
            "body_sha256": pa.array([body.hex() for body in bodies], pa.string()),
            "urls": counts["url_hash_count_distinct"],
            "shards": counts["shard_count_distinct"],
            "example_url": pa.array([candidates.examples[body] for body in bodies], pa.string()),
        },
        schema=INDEX_SCHEMA,
    )
    return index.sort_by([("urls", "descending"), ("body_sha256", "ascending")])


def standin_bodies(index: pa.Table) -> frozenset[str]:
    """The body hashes (hex) of an index, as the downloads compare them to ``body_sha256``."""
    return frozenset(index["body_sha256"].to_pylist()) if index.num_rows else frozenset()
