"""Duplicates within a shard: recorded, never removed.

The same photo lives at several URLs (syndication, sizes, a CDN's mirrors), and mmc4 says about
3% of its documents could have a URL duplicate. Each ``ok`` image whose body (``body_sha256``)
or perceptual hash (``phash``, within ``max_distance`` bits) equals an earlier one's, in
(doc, index) order, records that earlier image's ``image_name`` in ``duplicate_of``: the first
is kept as the original. Whether a duplicate is exact (the same bytes) or near (the same
picture, re-encoded or resized) is told by ``duplicate_counts``. The rows are all this reads:
no I/O, no decoding.

Near duplicates are found by the pigeonhole rule: two 64-bit hashes within ``d`` bits agree
exactly on at least one of ``d + 1`` bands, so only images sharing a band are compared. A band
value that many images share (a flat colour's hash) is compared with its first ``_BUCKET_SCAN``
holders only: an earlier match among them is enough.
"""

from __future__ import annotations

import pandas as pd

from .standins import row_sites

_BUCKET_SCAN = 64
KINDS = ("placeholder", "exact_duplicates", "near_duplicates")  # what by_site counts per site
_BITS = 64


def _bands(max_distance: int) -> list[tuple[int, int]]:
    """(shift, mask) of the ``max_distance + 1`` bands a 64-bit hash is cut into."""
    count = max_distance + 1
    edges = [round(i * _BITS / count) for i in range(count + 1)]
    return [(lo, (1 << (hi - lo)) - 1) for lo, hi in zip(edges, edges[1:], strict=False)]


def find_duplicates(table: pd.DataFrame, max_distance: int = 4) -> dict:
    """{index label: image_name of the earlier ok image it duplicates} for the table's ok rows
    (``max_distance`` < 0 turns near duplicates off; exact ones are always found)."""
    ok = table[table["outcome"] == "ok"]
    if ok.empty:
        return {}
    ok = ok.sort_values(["doc", "index"], kind="stable")
    found: dict = {}
    first_body: dict[str, str] = {}
    bands = _bands(max_distance) if 0 <= max_distance < _BITS else []
    buckets: dict[tuple[int, int], list[tuple[int, str]]] = {}
    columns = zip(ok.index, ok["image_name"], ok["body_sha256"], ok["phash"], strict=True)
    for label, name, body, phash in columns:
        if isinstance(body, str):
            if body in first_body:
                found[label] = first_body[body]
                continue
            first_body[body] = name
        if not bands or not isinstance(phash, str):
            continue
        value = int(phash, 16)
        match = _near(value, bands, buckets, max_distance)
        if match is not None:
            found[label] = match
            continue
        for band, (shift, mask) in enumerate(bands):
            buckets.setdefault((band, (value >> shift) & mask), []).append((value, name))
    return found


def _near(value: int, bands, buckets, max_distance: int) -> str | None:
    """The earliest kept image whose hash is within ``max_distance`` bits of ``value``."""
    for band, (shift, mask) in enumerate(bands):
        for other, name in buckets.get((band, (value >> shift) & mask), ())[:_BUCKET_SCAN]:
            if (value ^ other).bit_count() <= max_distance:
                return name
    return None


def duplicate_of(table: pd.DataFrame, max_distance: int = 4) -> pd.Series:
    """The table's ``duplicate_of`` column: the original's image_name for its duplicates, null
    elsewhere. A column, not a copy of the table: the shard run assigns it to its own table,
    whose copy would be the download step's peak memory (a shard's table is tens of MB)."""
    column = pd.Series(pd.NA, index=table.index, dtype="string")
    found = find_duplicates(table, max_distance)
    if found:
        column.loc[list(found)] = list(found.values())
    return column


def mark_duplicates(table: pd.DataFrame, max_distance: int = 4) -> pd.DataFrame:
    """A copy of the table with its ``duplicate_of`` column."""
    return table.assign(duplicate_of=duplicate_of(table, max_distance))


def _kinds(table: pd.DataFrame) -> pd.Series:
    """Per row: "placeholder" for a stand-in, "exact_duplicates" for a copy with the original's
    body, "near_duplicates" for another copy, None for the rest."""
    kinds = pd.Series(None, index=table.index, dtype=object)
    if table.empty or "duplicate_of" not in table.columns:
        return kinds
    bodies = dict(zip(table["image_name"], table["body_sha256"], strict=True))
    copies = table["duplicate_of"].notna()
    same = [
        isinstance(body, str) and bodies.get(original) == body
        for original, body in zip(
            table.loc[copies, "duplicate_of"], table.loc[copies, "body_sha256"], strict=True
        )
    ]
    kinds[copies] = ["exact_duplicates" if exact else "near_duplicates" for exact in same]
    kinds[table["outcome"] == "placeholder"] = "placeholder"
    return kinds


def duplicate_counts(table: pd.DataFrame) -> tuple[int, int]:
    """(exact, near) duplicates the table records: exact when the body is the original's."""
    kinds = _kinds(table)
    return int((kinds == "exact_duplicates").sum()), int((kinds == "near_duplicates").sum())


def by_site(table: pd.DataFrame, top: int = 20) -> list[dict]:
    """Per site (of the image's host), its stand-ins (``placeholder``) and exact and near
    duplicates, for the ``top`` sites with the most of them: what ``status_report`` records and
    ``corpus_summary`` adds up."""
    kinds = _kinds(table).dropna()
    if kinds.empty:
        return []
    counts = pd.crosstab(row_sites(table.loc[kinds.index]), kinds)
    counts = counts.reindex(columns=list(KINDS), fill_value=0)
    order = sorted(counts.index, key=lambda site: (-int(counts.loc[site].sum()), site))[:top]
    return [{"site": site, **{k: int(counts.loc[site, k]) for k in KINDS}} for site in order]
