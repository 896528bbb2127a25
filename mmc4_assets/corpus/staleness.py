"""Which downloaded images are stale, and when a shard's next image goes stale.

An image is stale when its last attempt failed in a retryable way and the cool-down has passed,
when its `ok` copy is older than the maximum age (revalidated with a conditional request), or when
its `ok` file is missing or no longer matches what was recorded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from mmc4_assets.corpus.status import retryable_mask


def _fetched_at(table: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(table["fetched_at"], utc=True)


def stale_clocks(table: pd.DataFrame) -> tuple[float | None, float | None]:
    """(earliest retryable failure, oldest ok copy) as POSIX times, None when there is none.

    Kept in metadata so that the sensor can apply the *current* cool-down and maximum age.
    """
    fetched = _fetched_at(table)
    retry = fetched[retryable_mask(table)].dropna()
    ok = fetched[table["outcome"] == "ok"].dropna()
    return (
        retry.min().timestamp() if not retry.empty else None,
        ok.min().timestamp() if not ok.empty else None,
    )


def stale_due_at(
    earliest_retryable_at: float | None,
    oldest_ok_at: float | None,
    *,
    retry_cooldown: timedelta,
    max_age: timedelta,
) -> float | None:
    """When the first image of a shard becomes stale by time alone (None: never)."""
    due = []
    if earliest_retryable_at is not None:
        due.append(earliest_retryable_at + retry_cooldown.total_seconds())
    if oldest_ok_at is not None:
        due.append(oldest_ok_at + max_age.total_seconds())
    return min(due) if due else None


def file_is_intact(path: Path, size: object, sha256: object) -> bool:
    """True when the file exists with the recorded size and hash (cheap size test first)."""
    try:
        if pd.notna(size) and os.stat(path).st_size != int(size):
            return False
        if pd.isna(sha256):
            return path.is_file()
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest() == sha256
    except OSError:
        return False


def stale_targets(
    table: pd.DataFrame,
    *,
    data_dir: Path,
    now: datetime,
    retry_cooldown: timedelta,
    max_age: timedelta,
    stored_sizes: Mapping[str, int] | None = None,
) -> set[tuple[int, int]]:
    """(doc, index) of every stale image of one shard's status table.

    ``stored_sizes`` ({relative path: size}, a listing of an object store) replaces the files
    under ``data_dir``: an ok image is intact when its object exists with the recorded size."""
    fetched = _fetched_at(table)
    due_retry = retryable_mask(table) & (fetched + retry_cooldown <= now)
    is_ok = table["outcome"] == "ok"
    too_old = is_ok & (fetched + max_age <= now)
    due = table.loc[due_retry | too_old]
    targets = set(zip(due["doc"], due["index"], strict=True))
    for row in table.loc[is_ok & ~too_old].itertuples(index=False):
        if pd.isna(row.path):
            intact = False
        elif stored_sizes is not None:
            intact = pd.notna(row.bytes) and stored_sizes.get(row.path) == int(row.bytes)
        else:
            intact = file_is_intact(data_dir / row.path, row.bytes, row.sha256)
        if not intact:
            targets.add((row.doc, row.index))
    return {(int(doc), int(index)) for doc, index in targets}
