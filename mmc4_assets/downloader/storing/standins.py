"""Stand-ins and tiny images within a shard: the stored images that are not what the page showed.

Many sites answer a removed image with a stand-in picture (imgur's ``removed.png``, Flickr's
``photo_unavailable``, a "no hotlinking" picture, a CDN's default image) instead of a 404, and
pages carry 1x1 tracking pixels and spacer GIFs as ``<img>``. Once every row of a shard exists,
``find_standins`` says which ``ok`` rows hold one; it reads rows only (no I/O), and the shard run
deletes the files of the rows it marks (``mark_standins`` gives their paths).

- ``too_small``: a side under ``min_side`` pixels, as served (tracking pixels, spacers).
- ``placeholder``: a final URL (after redirects) that a known stand-in pattern matches
  (``STANDIN_URLS``, and the run's ``standin_urls``), or a body (``body_sha256``) that one site
  served under at least ``min_urls`` distinct URLs from at least ``min_documents`` documents. A
  URL is its path and query: one URL repeated in several documents counts once, and so does one
  path under two host names or schemes of the site (a CDN's i0..i3 shards). Rows already
  ``placeholder`` (from a previous run) count toward their body's URLs and documents. And a body
  the corpus index lists (``known_bodies``: served under many URLs across the shards).

A row that is both is ``too_small``: a property of the image alone.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import pandas as pd

from ..fetching.urls import host_of
from ..politeness.sites import site_of

# Known stand-ins: (site, pattern of the path) of the URL a dead image's request ends at.
STANDIN_URLS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("imgur.com", re.compile(r"/removed\.(png|jpg|gif)$")),  # i.imgur.com/removed.png
    ("yimg.com", re.compile(r"/photo_unavailable[^/]*$")),  # s.yimg.com/pw/images/en-us/...
    ("flickr.com", re.compile(r"/photo_unavailable[^/]*$")),  # www.flickr.com/images/...
    ("staticflickr.com", re.compile(r"/photo_unavailable[^/]*$")),
)
_COUNTED = ("ok", "placeholder")
Patterns = tuple[tuple[str, re.Pattern[str]], ...]


@dataclass(frozen=True)
class Verdict:
    """What an ok row becomes, and why (its ``error``)."""

    outcome: str
    error: str


def url_patterns(extra: Iterable[tuple[str, str]] = ()) -> Patterns:
    """The shipped stand-in URLs and ``extra`` ones: (site, regular expression of the path)."""
    added = tuple((site_of(site), re.compile(pattern)) for site, pattern in extra)
    return STANDIN_URLS + added


def known_standin(url: object, patterns: Patterns = STANDIN_URLS) -> bool:
    """Whether ``url`` is a known stand-in's (the shipped ones, by default)."""
    if not isinstance(url, str) or not url:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    site = site_of(parts.hostname or "")
    return any(site == where and pattern.search(parts.path) for where, pattern in patterns)


def _url_key(url: str) -> str:
    """A URL within its site: path and query (host name and scheme left out)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def row_sites(table: pd.DataFrame) -> pd.Series:
    """Each row's site: of its ``host`` (the requested URL's), else of its URL."""
    hosts = pd.Series("", index=table.index, dtype=object)
    if "host" in table.columns:
        hosts = table["host"].astype(object).where(table["host"].notna(), "")
    missing = hosts == ""
    if missing.any():  # only those rows' URLs are parsed
        hosts[missing] = table.loc[missing, "url"].astype(str).map(host_of)
    return hosts.astype(str).map(site_of)


def _too_small(table: pd.DataFrame, ok: pd.Series, min_side: int) -> dict:
    width = table["original_width"].fillna(table["width"])
    height = table["original_height"].fillna(table["height"])
    tiny = ok & ((width < min_side) | (height < min_side)).fillna(False).astype(bool)
    return {
        label: Verdict(
            "too_small", f"{_side(width[label])}x{_side(height[label])}: a side under {min_side} px"
        )
        for label in table.index[tiny]
    }


def _side(value) -> str:
    return "?" if pd.isna(value) else str(int(value))


def _repeated_bodies(table: pd.DataFrame, min_urls: int, min_documents: int) -> dict:
    """(site, body_sha256) -> (URLs, documents) of the bodies served as stand-ins."""
    counted = table[table["outcome"].isin(_COUNTED) & table["body_sha256"].notna()]
    if counted.empty:
        return {}
    frame = pd.DataFrame(
        {
            "site": row_sites(counted),
            "body": counted["body_sha256"].astype(str),
            "url": counted["url"].astype(str).map(_url_key),
            "doc": counted["doc"],
        }
    )
    groups = frame.groupby(["site", "body"]).agg(urls=("url", "nunique"), docs=("doc", "nunique"))
    hits = groups[(groups["urls"] >= min_urls) & (groups["docs"] >= min_documents)]
    return {key: (int(row.urls), int(row.docs)) for key, row in hits.iterrows()}


def find_standins(
    table: pd.DataFrame,
    *,
    min_urls: int = 5,
    min_documents: int = 3,
    min_side: int = 10,
    standin_urls: Iterable[tuple[str, str]] = (),
    known_bodies: Collection[str] = frozenset(),
) -> dict:
    """The ok rows of a shard's status table to mark: {index label: Verdict}.

    ``min_urls`` 0 turns the count off (known stand-in URLs and tiny images are still marked);
    ``standin_urls``: known stand-ins besides the shipped ones, as (site, path pattern);
    ``known_bodies``: stand-in body hashes (hex) of the corpus index (``placeholder_index``)."""
    if table.empty:
        return {}
    ok = table["outcome"] == "ok"
    verdicts = _too_small(table, ok, min_side)
    final = table["final_url"].where(table["final_url"].notna(), table["url"])
    patterns = url_patterns(standin_urls)
    known = final.map(lambda url: known_standin(url, patterns)).astype(bool)
    for label in table.index[ok & known]:
        verdicts.setdefault(label, Verdict("placeholder", f"stand-in: ends at {final[label]}"))
    repeated = _repeated_bodies(table, min_urls, min_documents) if min_urls > 0 else {}
    if repeated:
        candidates = table[ok & table["body_sha256"].notna()]
        keys = zip(row_sites(candidates), candidates["body_sha256"].astype(str), strict=True)
        for label, key in zip(candidates.index, keys, strict=True):
            if key in repeated and label not in verdicts:
                urls, docs = repeated[key]
                why = f"stand-in: one body under {urls} URLs of {key[0]} from {docs} documents"
                verdicts[label] = Verdict("placeholder", why)
    if known_bodies:
        indexed = ok & table["body_sha256"].isin(known_bodies).fillna(False).astype(bool)
        for label in table.index[indexed]:
            verdicts.setdefault(label, Verdict("placeholder", "stand-in: in the corpus index"))
    return verdicts


def mark_standins(table: pd.DataFrame, **rules) -> tuple[pd.DataFrame, list[str]]:
    """The table with its stand-ins and tiny images marked, and the files they no longer have
    (paths relative to the data folder, for the caller to delete). A marked row keeps what was
    learnt of the image (mimetype, sizes, fingerprints); its ``path``, ``bytes`` and ``sha256``
    (the stored file's) become null. ``rules``: find_standins' thresholds and URLs."""
    verdicts = find_standins(table, **rules)
    if not verdicts:
        return table, []
    marked = table.copy()
    labels = list(verdicts)
    dropped = [str(path) for path in marked.loc[labels, "path"] if pd.notna(path)]
    marked.loc[labels, "outcome"] = [verdicts[label].outcome for label in labels]
    marked.loc[labels, "error"] = [verdicts[label].error for label in labels]
    marked.loc[labels, ["path", "bytes", "sha256"]] = pd.NA
    return marked, dropped
