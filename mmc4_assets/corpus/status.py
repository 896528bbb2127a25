"""The per-shard status table: schema, files, the reference report layout and summaries.

One row per image of the shard, whatever happened to it. The parquet file is the source of truth
(explicit Arrow schema, so an all-null column still has its type); the tsv.gz repeats it in the
reference script's header-less layout for drop-in users.
"""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Collection
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmc4_assets.storage import layout

from .atomic import atomic_write

OUTCOMES: tuple[str, ...] = (
    "ok",
    "http_error",
    "timeout",
    "connection_error",
    "rate_limited",
    "not_image",
    "corrupt",
    "too_large",
    "blocked",
    "opted_out",
    "invalid_url",
    "gone",
    "robots_disallowed",
    "placeholder",
    "too_small",
)
RETRYABLE_OUTCOMES: frozenset[str] = frozenset({"timeout", "connection_error", "rate_limited"})
"""Outcomes worth another try later; http_error rows with http_status >= 500 are too."""

_INT = "Int64"
_STR = "string"
COLUMN_TYPES: dict[str, str] = {
    "shard": _INT,
    "doc": _INT,
    "index": _INT,
    "image_name": _STR,
    "url": _STR,
    "outcome": _STR,
    "http_status": _INT,
    "error": _STR,
    "path": _STR,
    "mimetype": _STR,
    "bytes": _INT,
    "width": _INT,
    "height": _INT,
    "sha256": _STR,
    "etag": _STR,
    "last_modified": _STR,
    "fetched_at": "datetime64[us, UTC]",
    "attempts": _INT,
    # Extras beyond the contract (docs/contracts.md, "The status table").
    "host": _STR,
    "original_width": _INT,
    "original_height": _INT,
    # Fingerprints (issue 24): the SHA-256 of the body as served (before any shrinking; null for
    # a row rebuilt from a file on disk), the perceptual hash of its pixels (16 hex digits, as
    # imagehash's str(phash)), the URL the last answer came from (after redirects).
    "body_sha256": _STR,
    "phash": _STR,
    "final_url": _STR,
    # The image_name of an earlier ok image of the shard this one duplicates (the same body, or
    # a perceptual hash within a few bits): recorded, not removed (storing/duplicates.py).
    "duplicate_of": _STR,
}
STATUS_COLUMNS: list[str] = list(COLUMN_TYPES)[:18]
ALL_COLUMNS: list[str] = list(COLUMN_TYPES)
_NOT_NULL = {"shard", "doc", "index", "image_name", "url", "outcome", "fetched_at", "attempts"}

ARROW_SCHEMA = pa.schema(
    [
        pa.field(
            name,
            pa.timestamp("us", tz="UTC")
            if kind.startswith("datetime")
            else (pa.int64() if kind == _INT else pa.string()),
            nullable=name not in _NOT_NULL,
        )
        for name, kind in COLUMN_TYPES.items()
    ]
)

REFERENCE_TSV_COLUMNS = ["file", "folder", "local_identifier", "mimetype", "size", "status", "url"]


def status_parquet_path(data_dir: str | Path, shard: int) -> Path:
    return Path(data_dir) / layout.status_parquet(shard)


def status_tsv_path(data_dir: str | Path, shard: int) -> Path:
    return Path(data_dir) / layout.status_tsv(shard)


def normalize_status(table: pd.DataFrame | list[dict]) -> pd.DataFrame:
    """Give a table (or rows) every column with its declared dtype, sorted by (doc, index)."""
    frame = pd.DataFrame(table) if not isinstance(table, pd.DataFrame) else table.copy()
    for name, kind in COLUMN_TYPES.items():
        if name not in frame.columns:
            frame[name] = pd.NA
        if kind.startswith("datetime"):
            frame[name] = pd.to_datetime(frame[name], utc=True).astype(kind)
        else:
            frame[name] = frame[name].astype(kind)
    extra = [c for c in frame.columns if c not in COLUMN_TYPES]
    frame = frame[ALL_COLUMNS + extra]
    return frame.sort_values(["doc", "index"], kind="stable").reset_index(drop=True)


def write_status(table: pd.DataFrame, data_dir: str | Path, shard: int) -> tuple[Path, Path]:
    """Write the parquet and tsv.gz reports atomically; return their paths."""
    frame = normalize_status(table)[ALL_COLUMNS]
    arrow = pa.Table.from_pandas(frame, schema=ARROW_SCHEMA, preserve_index=False)
    parquet_path = status_parquet_path(data_dir, shard)
    with atomic_write(parquet_path, "wb") as handle:
        pq.write_table(arrow, handle, compression="zstd")
    tsv_path = status_tsv_path(data_dir, shard)
    text = to_reference_tsv_frame(frame).to_csv(sep="\t", header=False, index=False)
    with atomic_write(tsv_path, "wb") as handle:
        with gzip.GzipFile(fileobj=handle, mode="wb", mtime=0) as zipped:
            zipped.write(text.encode("utf-8"))
    return parquet_path, tsv_path


def read_status(data_dir: str | Path, shard: int) -> pd.DataFrame | None:
    """The shard's status table, or None when it was never written."""
    path = status_parquet_path(data_dir, shard)
    if not path.exists():
        return None
    return normalize_status(pq.read_table(path).to_pandas())


def reference_status_code(row) -> int:
    """The reference script's ``status`` number for one of our rows.

    The reference records the HTTP status, and 408 for any exception. Rows that the reference
    would have saved but we refuse get the HTTP code that names the reason, so ``status == 200``
    still means "a file is there":

    ================  ======================================
    outcome           status
    ================  ======================================
    ok                200 (also after a 304 revalidation)
    http_error        the HTTP status (400 if unknown)
    timeout           408
    connection_error  408
    rate_limited      429
    not_image         415 Unsupported Media Type
    corrupt           422 Unprocessable Content
    too_large         413 Content Too Large
    blocked           403 Forbidden
    opted_out         451 Unavailable For Legal Reasons
    invalid_url       400 Bad Request
    gone              410 Gone
    robots_disallowed 451 (the site's robots.txt: the owner said no, as with opted_out)
    placeholder       404 Not Found (a stand-in served instead of a 404: a soft 404)
    too_small         422 Unprocessable Content (no picture to see, as with corrupt)
    ================  ======================================
    """
    outcome = row["outcome"]
    if outcome == "http_error":
        status = row["http_status"]
        return int(status) if not pd.isna(status) else 400
    return _REFERENCE_CODES.get(outcome, 400)


def reference_status_codes(table: pd.DataFrame) -> list[int]:
    """reference_status_code for every row, without a per-row pandas Series."""
    return [
        reference_status_code({"outcome": outcome, "http_status": status})
        for outcome, status in zip(table["outcome"], table["http_status"], strict=True)
    ]


_REFERENCE_CODES = {
    "ok": 200,
    "timeout": 408,
    "connection_error": 408,
    "rate_limited": 429,
    "not_image": 415,
    "corrupt": 422,
    "too_large": 413,
    "blocked": 403,
    "opted_out": 451,
    "invalid_url": 400,
    "gone": 410,
    "robots_disallowed": 451,
    "placeholder": 404,
    "too_small": 422,
}


def to_reference_tsv_frame(table: pd.DataFrame) -> pd.DataFrame:
    """Rows in the reference report layout: file, folder, local_identifier, mimetype, size,
    status, url (file is the saved image's path relative to the data dir, or empty)."""
    frame = pd.DataFrame(
        {
            "file": table["path"].fillna("").astype(str),
            "folder": [f"images/{int(shard)}" for shard in table["shard"]],
            "local_identifier": table["image_name"].astype(str),
            "mimetype": table["mimetype"].fillna("").astype(str),
            "size": table["bytes"].astype("Int64").astype(str).replace("<NA>", ""),
            "status": reference_status_codes(table),
            "url": table["url"].astype(str),
        }
    )
    return frame[REFERENCE_TSV_COLUMNS].reset_index(drop=True)


def row_host(row) -> str:
    host = row.get("host") if hasattr(row, "get") else None
    if isinstance(host, str) and host:
        return host
    try:
        return (urlsplit(str(row["url"])).hostname or "").lower()
    except ValueError:
        return ""


def summarize(table: pd.DataFrame, top_hosts: int = 10) -> dict:
    """Counts for the status report: per outcome (all listed), success rate, bytes, worst hosts."""
    counts = table["outcome"].value_counts().to_dict() if len(table) else {}
    per_outcome = {outcome: int(counts.get(outcome, 0)) for outcome in OUTCOMES}
    images = int(len(table))
    ok = per_outcome["ok"]
    failed = table[table["outcome"] != "ok"]
    hosts = failed["host"] if "host" in failed.columns else pd.Series([None] * len(failed))
    failures: Counter[str] = Counter(
        host if isinstance(host, str) and host else row_host({"url": url})
        for host, url in zip(hosts, failed["url"], strict=True)
    )
    total_bytes = table.loc[table["outcome"] == "ok", "bytes"].fillna(0).sum() if images else 0
    return {
        "images": images,
        "ok": ok,
        "outcomes": per_outcome,
        "success_rate": (ok / images) if images else 0.0,
        "bytes": int(total_bytes),
        "top_failing_hosts": failures.most_common(top_hosts),
    }


def retryable_mask(table: pd.DataFrame) -> pd.Series:
    """Rows whose failure may well clear on a later try: timeouts, connection errors, 429, 5xx."""
    status = pd.to_numeric(table["http_status"], errors="coerce")
    server_error = (table["outcome"] == "http_error") & (status >= 500)
    return table["outcome"].isin(RETRYABLE_OUTCOMES) | server_error.fillna(False)


def check_status(
    table: pd.DataFrame, refs, data_dir: str | Path, stored: Collection[str] | None = None
) -> list[str]:
    """Problems with a status table: each ref exactly one row, every ok row's file present (in
    ``stored``, the relative paths an object store lists, when given)."""
    problems: list[str] = []
    keys = Counter(zip(table["doc"].astype(int), table["index"].astype(int), strict=True))
    expected = {(int(ref.doc), int(ref.index)) for ref in refs}
    for key, count in keys.items():
        if count > 1:
            problems.append(f"image {key[0]}.{key[1]} has {count} rows")
        if key not in expected:
            problems.append(f"image {key[0]}.{key[1]} is not in the shard")
    missing = expected - set(keys)
    if missing:
        sample = ", ".join(f"{d}.{i}" for d, i in sorted(missing)[:5])
        problems.append(f"{len(missing)} images have no row (e.g. {sample})")
    bad = [o for o in table["outcome"].unique() if o not in OUTCOMES]
    if bad:
        problems.append(f"unknown outcomes: {sorted(bad)}")
    root = Path(data_dir)
    for _, row in table[table["outcome"] == "ok"].iterrows():
        path = row["path"]
        present = stored is not None and str(path) in stored
        if pd.isna(path) or not (present or (stored is None and (root / str(path)).is_file())):
            problems.append(f"ok image {row['doc']}.{row['index']} has no file ({path})")
    return problems
