"""The status table: schema round trip, reference report layout, summaries, checks."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmc4_assets.corpus.status import (
    ALL_COLUMNS,
    ARROW_SCHEMA,
    OUTCOMES,
    REFERENCE_TSV_COLUMNS,
    RETRYABLE_OUTCOMES,
    STATUS_COLUMNS,
    check_status,
    read_status,
    reference_status_code,
    retryable_mask,
    status_parquet_path,
    status_tsv_path,
    summarize,
    to_reference_tsv_frame,
    write_status,
)
from mmc4_assets.downloader.refs import ImageRef

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def row(doc, index, outcome, **extra):
    base = {
        "shard": 42,
        "doc": doc,
        "index": index,
        "image_name": f"{doc}_{index}.jpg",
        "url": f"https://host{doc % 2}.example/{doc}/{index}.jpg",
        "outcome": outcome,
        "fetched_at": NOW,
        "attempts": 1,
    }
    return {**base, **extra}


def sample() -> pd.DataFrame:
    return pd.DataFrame(
        [
            row(1, 0, "http_error", http_status=404, error="HTTP 404"),
            row(
                0,
                0,
                "ok",
                http_status=200,
                path="images/42/0_0.jpg",
                mimetype="image/jpeg",
                bytes=1234,
                width=800,
                height=400,
                sha256="ab" * 32,
                etag='"x"',
                body_sha256="cd" * 32,
                phash="9de36ca292dcd60c",
                final_url="https://cdn.example/0/0.jpg",
            ),
            row(0, 1, "timeout", error="deadline"),
            row(1, 1, "http_error", http_status=503),
        ]
    )


def test_constants():
    assert len(OUTCOMES) == 15 and "robots_disallowed" in OUTCOMES
    assert OUTCOMES[-2:] == ("placeholder", "too_small")  # stand-ins (issue 24): not retried
    assert RETRYABLE_OUTCOMES == {"timeout", "connection_error", "rate_limited"}
    assert STATUS_COLUMNS[:6] == ["shard", "doc", "index", "image_name", "url", "outcome"]
    assert len(STATUS_COLUMNS) == 18


def test_parquet_round_trip_types(tmp_path: Path):
    parquet, tsv = write_status(sample(), tmp_path, 42)
    assert parquet == status_parquet_path(tmp_path, 42) == tmp_path / "status/42.parquet"
    assert tsv == status_tsv_path(tmp_path, 42) == tmp_path / "status/42.tsv.gz"
    schema = pq.read_schema(parquet)
    assert str(schema.field("fetched_at").type) == "timestamp[us, tz=UTC]"
    assert str(schema.field("http_status").type) == "int64"
    assert str(schema.field("etag").type) == "string"
    table = read_status(tmp_path, 42)
    assert list(table.columns[:18]) == STATUS_COLUMNS
    assert list(zip(table.doc, table["index"], strict=True)) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert str(table.http_status.dtype) == "Int64" and table.http_status.isna().sum() == 1
    assert str(table.fetched_at.dtype) == "datetime64[us, UTC]"
    assert table.loc[0, "fetched_at"] == pd.Timestamp(NOW)
    assert table.loc[0, "bytes"] == 1234 and pd.isna(table.loc[1, "bytes"])
    assert read_status(tmp_path, 43) is None
    assert not list((tmp_path / "status").glob(".*.part"))


def test_tsv_layout(tmp_path: Path):
    _, tsv = write_status(sample(), tmp_path, 42)
    lines = gzip.decompress(tsv.read_bytes()).decode().splitlines()
    assert len(lines) == 4
    ok = lines[0].split("\t")
    assert ok == [
        "images/42/0_0.jpg",
        "images/42",
        "0_0.jpg",
        "image/jpeg",
        "1234",
        "200",
        "https://host0.example/0/0.jpg",
    ]
    timeout = lines[1].split("\t")
    assert timeout[0] == "" and timeout[4] == "" and timeout[5] == "408"
    assert lines[2].split("\t")[5] == "404"


def test_reference_codes():
    assert reference_status_code({"outcome": "ok", "http_status": 304}) == 200
    assert reference_status_code({"outcome": "http_error", "http_status": 403}) == 403
    assert reference_status_code({"outcome": "rate_limited", "http_status": 429}) == 429
    assert reference_status_code({"outcome": "connection_error", "http_status": None}) == 408
    # A stand-in is a soft 404 (the site answered 200 with it); a tiny image has nothing to show.
    assert reference_status_code({"outcome": "placeholder", "http_status": 200}) == 404
    assert reference_status_code({"outcome": "too_small", "http_status": 200}) == 422
    assert {reference_status_code({"outcome": o, "http_status": pd.NA}) for o in OUTCOMES} >= {
        200,
        408,
        429,
        415,
        422,
        413,
        403,
        451,
        400,
        410,
    }
    assert list(to_reference_tsv_frame(sample()).columns) == [
        "file",
        "folder",
        "local_identifier",
        "mimetype",
        "size",
        "status",
        "url",
    ]


def test_summarize_and_retryable():
    summary = summarize(sample())
    assert summary["images"] == 4 and summary["ok"] == 1 and summary["success_rate"] == 0.25
    assert set(summary["outcomes"]) == set(OUTCOMES) and summary["outcomes"]["http_error"] == 2
    assert summary["bytes"] == 1234
    assert summary["top_failing_hosts"][0] == ("host1.example", 2)
    flags = retryable_mask(sample()).tolist()
    assert flags == [False, False, True, True]


def test_check_status(tmp_path: Path):
    table = sample()
    refs = [ImageRef(d, i, "", "") for d, i in [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]]
    problems = check_status(table, refs, tmp_path)
    assert any("no row" in p for p in problems)
    assert any("has no file" in p for p in problems)
    (tmp_path / "images/42").mkdir(parents=True)
    (tmp_path / "images/42/0_0.jpg").write_bytes(b"x")
    assert check_status(table, refs[:4], tmp_path) == []
    doubled = pd.concat([table, table.iloc[:1]])
    assert any("2 rows" in p for p in check_status(doubled, refs[:4], tmp_path))


FINGERPRINTS = ["body_sha256", "phash", "final_url"]


def test_fingerprints_are_the_last_columns(tmp_path: Path):
    """Added at the end: the contract's columns, the extras before them and the tsv unchanged."""
    assert ALL_COLUMNS[:18] == STATUS_COLUMNS
    extras = ["host", "original_width", "original_height", *FINGERPRINTS, "duplicate_of"]
    assert ALL_COLUMNS[18:] == extras
    assert REFERENCE_TSV_COLUMNS == [
        "file",
        "folder",
        "local_identifier",
        "mimetype",
        "size",
        "status",
        "url",
    ]
    parquet, tsv = write_status(sample(), tmp_path, 42)
    schema = pq.read_schema(parquet)
    assert [str(schema.field(name).type) for name in FINGERPRINTS] == ["string"] * 3
    assert all(schema.field(name).nullable for name in FINGERPRINTS)
    table = read_status(tmp_path, 42)
    ok = table[table.outcome == "ok"].iloc[0]
    assert (ok.body_sha256, ok.phash, ok.final_url) == (
        "cd" * 32,
        "9de36ca292dcd60c",
        "https://cdn.example/0/0.jpg",
    )
    assert table.loc[table.outcome != "ok", FINGERPRINTS].isna().all().all()
    lines = gzip.decompress(tsv.read_bytes()).decode().splitlines()
    assert {len(line.split("\t")) for line in lines} == {7}


def test_a_table_written_before_the_fingerprints_is_read(tmp_path: Path):
    """A parquet file of the schema without the three columns: read with them, null, typed."""
    old_schema = pa.schema([f for f in ARROW_SCHEMA if f.name not in FINGERPRINTS])
    frame = sample().drop(columns=FINGERPRINTS)
    for name in old_schema.names:
        if name not in frame.columns:
            frame[name] = None
    frame["fetched_at"] = pd.to_datetime(frame["fetched_at"], utc=True).astype(
        "datetime64[us, UTC]"
    )
    arrow = pa.Table.from_pandas(frame[old_schema.names], schema=old_schema, preserve_index=False)
    path = status_parquet_path(tmp_path, 42)
    path.parent.mkdir(parents=True)
    pq.write_table(arrow, path)
    assert "phash" not in pq.read_schema(path).names
    table = read_status(tmp_path, 42)
    assert list(table.columns) == ALL_COLUMNS
    assert [str(table[name].dtype) for name in FINGERPRINTS] == ["string"] * 3
    assert table[FINGERPRINTS].isna().all().all() and len(table) == 4
    write_status(table, tmp_path, 42)  # and written back with them
    assert pq.read_schema(path).names == ALL_COLUMNS
