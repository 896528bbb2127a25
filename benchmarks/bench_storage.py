"""The download step on a local data folder vs on object storage (SeaweedFS's S3 on 127.0.0.1).

Why: MMC4_DATA_DIR=s3://... makes the download step work in a scratch folder and publish each
object in one upload, and makes reruns decide from one listing instead of reading files. This
times the real asset (`download_images`, materialized in process on a temporary instance) on the
same loopback images with both roots: a first download, and a rerun that holds every image. It
prints the wall times and the s3/local ratios.

    .venv/bin/python benchmarks/bench_storage.py --documents 600
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dagster as dg  # noqa: E402

from mmc4_assets_tests.support.materialize import latest_metadata, materialize_shard  # noqa: E402
from mmc4_assets_tests.support.servers.seaweedfs import SeaweedS3  # noqa: E402
from mmc4_devtools.loopback_web import LoopbackWeb  # noqa: E402
from mmc4_devtools.sample_shard import write_sample_shard  # noqa: E402

SHARD = "42"
DOWNLOAD = "downloaded_images status_report"


def timed_download(data_dir: str, docs: Path) -> dict:
    """raw_docs (untimed), then the download step twice: a first download and a rerun."""
    os.environ["MMC4_DATA_DIR"] = data_dir
    os.environ["MMC4_DOCS_URL"] = str(docs)
    with dg.instance_for_test() as instance:
        assert materialize_shard(instance, "raw_docs", SHARD).success
        times = {}
        for label in ("first", "rerun"):
            started = time.perf_counter()
            assert materialize_shard(instance, DOWNLOAD, SHARD).success
            times[label] = time.perf_counter() - started
        meta = latest_metadata(instance, "downloaded_images", SHARD)
    return {**times, "images": meta["images"], "ok": meta["ok"], "bytes": meta["bytes"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=600, help="documents in the shard")
    parser.add_argument("--latency-ms", type=float, default=5.0, help="loopback image latency")
    args = parser.parse_args(argv)
    os.environ["MMC4_ALLOW_PRIVATE_NETWORKS"] = "1"
    with (
        tempfile.TemporaryDirectory(prefix="mmc4-bench-storage-") as tmp,
        LoopbackWeb(hosts=4, latency_ms=args.latency_ms) as web,
        SeaweedS3() as s3,
    ):
        docs = Path(tmp) / "source"
        docs.mkdir()
        info = write_sample_shard(
            docs / f"docs_no_face_shard_{SHARD}_v2.jsonl",
            documents=args.documents,
            seed=7,
            image_base_url=web.base_urls[0],
        )
        os.environ.update(s3.env)
        os.environ["MMC4_SCRATCH_DIR"] = tmp
        timed_download(str(Path(tmp) / "warm-up"), docs)  # imports and caches, for neither side
        local = timed_download(str(Path(tmp) / "data"), docs)
        remote = timed_download(f"s3://{s3.new_bucket('bench')}/mmc4", docs)
    assert local["ok"] == remote["ok"] and local["bytes"] == remote["bytes"], (local, remote)
    print(
        f"shard: {args.documents} documents, {info['images']} images, {local['ok']} ok, "
        f"{local['bytes'] / 1e6:.1f} MB stored"
    )
    print(f"{'':8}{'local':>10}{'s3':>10}{'s3/local':>10}")
    for label in ("first", "rerun"):
        ratio = remote[label] / local[label]
        print(f"{label:8}{local[label]:>9.2f}s{remote[label]:>9.2f}s{ratio:>10.2f}")


if __name__ == "__main__":
    main()
