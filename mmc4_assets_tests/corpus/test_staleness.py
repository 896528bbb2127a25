"""Which images are stale, from a status table and the files on disk."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pandas as pd

from mmc4_assets.corpus.staleness import stale_clocks, stale_due_at, stale_targets

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def table(rows: list[dict]) -> pd.DataFrame:
    base = {"http_status": None, "path": None, "bytes": None, "sha256": None}
    return pd.DataFrame(
        [{**base, "doc": i, "index": 0, **row} for i, row in enumerate(rows)]
    ).assign(fetched_at=lambda t: pd.to_datetime(t["fetched_at"], utc=True))


def saved(tmp_path, name: str, content: bytes = b"image bytes") -> dict:
    (tmp_path / name).write_bytes(content)
    return {
        "outcome": "ok",
        "path": name,
        "bytes": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
    }


def test_retryable_failures_wait_for_the_cooldown(tmp_path):
    rows = table(
        [
            {"outcome": "timeout", "fetched_at": NOW - 2 * DAY},
            {"outcome": "connection_error", "fetched_at": NOW - timedelta(hours=1)},
            {"outcome": "http_error", "http_status": 503, "fetched_at": NOW - 2 * DAY},
            {"outcome": "http_error", "http_status": 404, "fetched_at": NOW - 2 * DAY},
            {"outcome": "not_image", "fetched_at": NOW - 2 * DAY},
            {"outcome": "rate_limited", "fetched_at": NOW - 2 * DAY},
        ]
    )
    targets = stale_targets(rows, data_dir=tmp_path, now=NOW, retry_cooldown=DAY, max_age=99 * DAY)
    assert targets == {(0, 0), (2, 0), (5, 0)}


def test_ok_images_go_stale_with_age_or_when_their_file_changes(tmp_path):
    rows = table(
        [
            {**saved(tmp_path, "fresh.jpg"), "fetched_at": NOW - DAY},
            {**saved(tmp_path, "old.jpg"), "fetched_at": NOW - 40 * DAY},
            {**saved(tmp_path, "missing.jpg"), "fetched_at": NOW - DAY},
            {**saved(tmp_path, "altered.jpg"), "fetched_at": NOW - DAY},
        ]
    )
    (tmp_path / "missing.jpg").unlink()
    (tmp_path / "altered.jpg").write_bytes(b"IMAGE BYTES")  # same size, other content
    targets = stale_targets(rows, data_dir=tmp_path, now=NOW, retry_cooldown=DAY, max_age=30 * DAY)
    assert targets == {(1, 0), (2, 0), (3, 0)}


def test_clocks_give_the_first_moment_something_goes_stale():
    rows = table(
        [
            {"outcome": "ok", "fetched_at": NOW - 10 * DAY},
            {"outcome": "ok", "fetched_at": NOW - 3 * DAY},
            {"outcome": "timeout", "fetched_at": NOW - DAY},
            {"outcome": "http_error", "http_status": 404, "fetched_at": NOW - 50 * DAY},
        ]
    )
    retry_at, ok_at = stale_clocks(rows)
    assert retry_at == (NOW - DAY).timestamp()
    assert ok_at == (NOW - 10 * DAY).timestamp()
    due = stale_due_at(retry_at, ok_at, retry_cooldown=2 * DAY, max_age=30 * DAY)
    assert due == (NOW + DAY).timestamp()
    assert stale_due_at(None, None, retry_cooldown=DAY, max_age=DAY) is None
    assert stale_clocks(table([{"outcome": "gone", "fetched_at": NOW}])) == (None, None)
