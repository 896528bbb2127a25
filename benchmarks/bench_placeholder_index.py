"""The corpus stand-in index over generated status tables of realistic size, projected to 23,085.

Writes `--tables` status parquet files (default 200) under `.bench/placeholder-index/status/`,
each `--rows` rows (16,000, a shard's images) in the status table's full schema: ~80% ok with a
random body each, the rest failures without a body; a few stand-ins spread thinly (2-3 URLs per
table in a quarter of the tables) and a real photo at one URL in every table, as decoys. Then, in
a child process (so that its peak RSS is the index's alone), it builds the index as the
`placeholder_index` asset does: `StatusTables` reading every file through a `LocalStore`, into
`build_placeholder_index`, with the sketch sized for the full corpus (2 x 256 MiB) unless
`--sketch-bits` says otherwise. Reported: seconds (and the share spent reading the files),
peak RSS, what the index found, and the projection to 23,085 shards (time linear in the tables;
memory: the sketch is already full size, the exact part grows with the stand-ins' rows).

    flock /work/suite.lock .venv/bin/python benchmarks/bench_placeholder_index.py [--tables 200]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmc4_assets.corpus.placeholder_index import _width_bits, build_placeholder_index  # noqa: E402
from mmc4_assets.corpus.status import ARROW_SCHEMA  # noqa: E402
from mmc4_assets.storage import LocalStore, layout  # noqa: E402
from mmc4_assets.storage.placeholders import StatusTables  # noqa: E402

CORPUS_SHARDS = 23_085
FAILURES = ("http_error", "timeout", "connection_error", "not_image", "rate_limited")


def hex_hashes(rng: np.random.Generator, count: int) -> list[str]:
    text = rng.bytes(32 * count).hex()
    return [text[i : i + 64] for i in range(0, 64 * count, 64)]


def status_table(shard: int, rows: int, ok_share: float, standins: list[str], rng) -> pa.Table:
    """One shard's status table: random photos, failures, thin stand-ins and a famous photo."""
    docs = np.sort(rng.integers(0, rows // 5, rows))
    hosts = [f"img{h}.site{h % 997}.example" for h in rng.integers(0, 4000, rows)]
    urls = [f"https://{host}/p/{shard}/{n}.jpg" for n, host in enumerate(hosts)]
    ok = rng.random(rows) < ok_share
    outcome = np.where(ok, "ok", rng.choice(FAILURES, rows)).astype(object)
    body = np.array(hex_hashes(rng, rows), dtype=object)
    body[~ok] = None
    if shard % 4 == 0:  # each stand-in at 2-3 URLs of their own, in a quarter of the tables
        for k, sha in enumerate(standins):
            for j in range(2 + (shard + k) % 2):
                n = (k * 3 + j) % rows
                urls[n], body[n], outcome[n] = f"https://cdn{k}.example/{shard}/{j}.png", sha, "ok"
    urls[-1], body[-1], outcome[-1] = "https://news.example/famous.jpg", "f" * 64, "ok"
    ok = outcome == "ok"
    now = datetime.now(UTC)
    columns = {
        "shard": [shard] * rows,
        "doc": docs,
        "index": np.zeros(rows, np.int64),
        "image_name": [f"{n}.jpg" for n in range(rows)],
        "url": urls,
        "outcome": outcome,
        "http_status": np.where(ok, 200, 404),
        "error": [None if good else "it failed" for good in ok],
        "path": [f"images/{shard}/{n}.jpg" if good else None for n, good in enumerate(ok)],
        "mimetype": ["image/jpeg" if good else None for good in ok],
        "bytes": np.where(ok, rng.integers(5_000, 200_000, rows), 0),
        "width": np.where(ok, 800, 0),
        "height": np.where(ok, 600, 0),
        "sha256": body,
        "fetched_at": [now] * rows,
        "attempts": np.ones(rows, np.int64),
        "host": hosts,
        "body_sha256": body,
        "phash": [f"{v:016x}" for v in rng.integers(0, 2**63, rows)],
        "final_url": urls,
    }
    arrays = {}
    for field in ARROW_SCHEMA:
        values = columns.get(field.name, [None] * rows)
        arrays[field.name] = pa.array(values, field.type, from_pandas=True)
    return pa.table(arrays, schema=ARROW_SCHEMA)


def generate(root: Path, tables: int, rows: int, ok_share: float, standins: int) -> float:
    rng = np.random.default_rng(7)
    bodies = hex_hashes(rng, standins)
    (root / "status").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for shard in range(tables):
        path = root / layout.status_parquet(shard)
        if not path.exists():
            table = status_table(shard, rows, ok_share, bodies, rng)
            pq.write_table(table, path.with_suffix(".tmp"), compression="zstd")
            path.with_suffix(".tmp").rename(path)
    return time.monotonic() - started


def measure(root: Path, tables: int, sketch_bits: int, min_urls: int) -> dict:
    """In the child: read once (the files alone), then build the index as the asset does."""
    store = LocalStore(root)
    rss_start = _rss_mb("VmRSS")
    started = time.monotonic()
    rows = sum(table.num_rows for table in StatusTables(store, range(tables)))
    read_seconds = time.monotonic() - started
    started = time.monotonic()
    index = build_placeholder_index(
        StatusTables(store, range(tables)), min_urls=min_urls, sketch_bits=sketch_bits
    )
    seconds = time.monotonic() - started
    return {
        "tables": tables,
        "rows": rows,
        "sketch_bits": sketch_bits,
        "read_pass_seconds": round(read_seconds, 2),
        "index_seconds": round(seconds, 2),
        "rss_at_start_mb": rss_start,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "bodies_indexed": index.num_rows,
        "urls": index["urls"].to_pylist()[:5],
        "famous_photo_indexed": "f" * 64 in set(index["body_sha256"].to_pylist()),
    }


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return -1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", type=int, default=200)
    parser.add_argument("--rows", type=int, default=16_000)
    parser.add_argument("--ok-share", type=float, default=0.8)
    parser.add_argument("--standins", type=int, default=20)
    parser.add_argument("--min-urls", type=int, default=10)
    parser.add_argument("--sketch-bits", type=int, default=_width_bits(range(CORPUS_SHARDS)))
    parser.add_argument("--root", type=Path, default=REPO / ".bench" / "placeholder-index")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.root, args.tables, args.sketch_bits, args.min_urls)))
        return
    made = generate(args.root, args.tables, args.rows, args.ok_share, args.standins)
    size = sum(p.stat().st_size for p in (args.root / "status").glob("*.parquet"))
    print(f"{args.tables} tables of {args.rows} rows ready in {made:.1f}s ({size / 1e6:.0f} MB)")
    child = [sys.executable, __file__, "--child", *sys.argv[1:]]
    result = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
    scale = CORPUS_SHARDS / args.tables
    result["projected_corpus_seconds"] = round(result["index_seconds"] * scale)
    result["projected_corpus_read_seconds"] = round(result["read_pass_seconds"] * 2 * scale)
    result["mb_per_table"] = round(size / 1e6 / args.tables, 2)
    print(json.dumps(result, indent=2))
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "placeholder_index.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
