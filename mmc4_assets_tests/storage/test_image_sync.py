"""ImageSync on a real S3 server: images uploaded while a download runs, a killed run's uploads
adopted by the next run, deletions and the status table last."""

from __future__ import annotations

import os
import time

import pandas as pd
import pytest

from mmc4_assets.storage import open_store
from mmc4_assets.storage.image_sync import ImageSync
from mmc4_assets_tests.support.materialize import materialize_shard

pytestmark = pytest.mark.system


def write_final(path, body: bytes) -> None:
    """As the engine writes: a dot-temporary renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.part")
    temporary.write_bytes(body)
    os.replace(temporary, path)


def test_images_go_up_while_the_step_runs_and_the_table_comes_last(s3_env, bucket):
    store = open_store(f"s3://{bucket}/data")
    store_fs = s3_env.filesystem()
    with store.workspace() as seed:
        write_final(seed / "images" / "7" / "old.jpg", b"old image")
        store.publish(seed, ["images/7/old.jpg"])
    with store.workspace() as work:
        sync = ImageSync(store, work, 7, interval=0.05)
        assert sync.stored == {"images/7/old.jpg": 9}
        with sync.uploading():
            write_final(work / "images" / "7" / "new.jpg", b"new image!")
            (work / "images" / "7" / ".half.jpg.part").write_bytes(b"half")
            deadline = time.monotonic() + 60
            while (work / "images" / "7" / "new.jpg").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        # Uploaded, then dropped from scratch; the temporary never went up.
        assert not (work / "images" / "7" / "new.jpg").exists()
        assert store.listing("images/7") == {"images/7/old.jpg": 9, "images/7/new.jpg": 10}
        assert store.listing("status") == {}
        write_final(work / "images" / "7" / "last.jpg", b"last")
        for name in ("7.parquet", "7.tsv.gz"):
            write_final(work / "status" / name, b"table")
        table = pd.DataFrame(
            {
                "outcome": ["ok", "ok", "gone"],
                "path": ["images/7/new.jpg", "images/7/last.jpg", None],
                "bytes": pd.array([10, 4, None], dtype="Int64"),
            }
        )
        sync.finish(table)
    assert store.listing("images/7") == {"images/7/new.jpg": 10, "images/7/last.jpg": 4}
    assert set(store.listing("status")) == {"status/7.parquet", "status/7.tsv.gz"}
    assert store_fs.cat(f"{bucket}/data/images/7/last.jpg") == b"last"


def test_a_killed_runs_uploads_are_adopted_not_downloaded_again(
    instance, s3_data_dir, shard_folder, image_web, monkeypatch
):
    monkeypatch.setenv("MMC4_DOCS_URL", str(shard_folder))
    monkeypatch.setenv("MMC4_ALLOW_PRIVATE_NETWORKS", "1")
    assert materialize_shard(instance, "raw_docs downloaded_images status_report").success
    store = open_store(s3_data_dir)
    images = store.listing("images/42")
    # A run killed after uploading its images and before its status table.
    store.delete(["status/42.parquet", "status/42.tsv.gz"])
    fetched = image_web.total_requests
    assert materialize_shard(instance, "downloaded_images status_report").success
    assert image_web.total_requests == fetched
    assert store.listing("images/42") == images
    assert set(store.listing("status")) == {"status/42.parquet", "status/42.tsv.gz"}
