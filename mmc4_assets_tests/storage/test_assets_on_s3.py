"""Every asset of a shard with MMC4_DATA_DIR=s3://bucket/prefix, on a real S3 server (SeaweedFS)
and a real Dagster instance: outputs land in the bucket, reruns fetch nothing again, a stale run
re-downloads only what was deleted or altered in the bucket, and nothing is left in scratch."""

from __future__ import annotations

import io
import subprocess
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmc4_assets.resources import StalenessPolicy
from mmc4_assets.sensors import STALE_RUN_CONFIG, stale_reason
from mmc4_assets.storage import open_store
from mmc4_assets_tests.support.materialize import latest_metadata, materialize_shard
from mmc4_assets_tests.test_crash_safety import mount_tmpfs

pytestmark = pytest.mark.system

EVERYTHING = "raw_docs reassigned_docs downloaded_images status_report training_shards"


def bucket_status(store, shard: int) -> pd.DataFrame:
    return pq.read_table(
        io.BytesIO(store.fs.cat(store._key(f"status/{shard}.parquet")))
    ).to_pandas()


def assert_status_matches_objects(store, shard: int) -> pd.DataFrame:
    """ok rows <-> image objects, one for one, sizes equal."""
    table = bucket_status(store, shard)
    ok = table[table["outcome"] == "ok"]
    assert dict(zip(ok["path"], ok["bytes"].astype(int), strict=True)) == store.listing(
        f"images/{shard}"
    )
    return table


def test_every_asset_reads_and_writes_the_bucket(
    instance, s3_data_dir, shard_folder, image_web, monkeypatch, tmp_path
):
    monkeypatch.setenv("MMC4_DOCS_URL", str(shard_folder))
    monkeypatch.setenv("MMC4_ALLOW_PRIVATE_NETWORKS", "1")
    store = open_store(s3_data_dir)

    result = materialize_shard(instance, EVERYTHING)
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {
        "assignments_are_valid": True,
        "every_image_has_one_status": True,
        "training_shards_match_their_counts": True,
    }
    for rel in ("raw_docs/42.jsonl", "reassigned_docs/42.jsonl", "status/42.tsv.gz"):
        assert store.fs.size(store._key(rel)) > 0, rel
    table = assert_status_matches_objects(store, 42)
    assert len(table) > 0 and set(table["outcome"]) == {"ok"}
    tars = store.listing("webdataset")
    assert "webdataset/42.sizes.json" in tars and "webdataset/42-000.tar" in tars
    assert (
        latest_metadata(instance, "status_report")["parquet"] == f"{s3_data_dir}/status/42.parquet"
    )
    assert not any((tmp_path / "scratch").iterdir())  # every scratch folder was removed
    assert not (tmp_path / "data").exists() and not (tmp_path / "corpus").exists()

    # A rerun holds every image from the listing: no request reaches the image host.
    fetched = image_web.total_requests
    assert materialize_shard(instance, "downloaded_images status_report").success
    assert image_web.total_requests == fetched
    assert_status_matches_objects(store, 42)

    # A stale run re-downloads only the image deleted and the one altered in the bucket.
    first, second, *rest = sorted(store.listing("images/42"))
    store.delete([first])
    store.fs.pipe(store._key(second), b"not the image we stored")
    urls = dict(zip(table["path"], table["url"], strict=True))
    before = {rel: image_web.requests_for(url) for rel, url in urls.items()}
    run = materialize_shard(
        instance, "downloaded_images status_report", run_config=STALE_RUN_CONFIG
    )
    assert run.success
    again = {rel for rel, url in urls.items() if image_web.requests_for(url) > before[rel]}
    assert again == {first, second}
    after = assert_status_matches_objects(store, 42)
    assert set(after["outcome"]) == {"ok"}
    assert latest_metadata(instance, "downloaded_images")["attempted"] == 2

    # corpus_summary adds up the bucket's status tables.
    assert materialize_shard(instance, "corpus_summary", partition=None).success
    summary = latest_metadata(instance, "corpus_summary", partition=None)
    assert summary["images"] == len(after) and summary["ok"] == int(
        (after["outcome"] == "ok").sum()
    )
    assert summary["bytes"] == int(after.loc[after["outcome"] == "ok", "bytes"].sum())

    # The stale-image sensor notices an object deleted behind our back (a listing digest).
    report = latest_metadata(instance, "status_report")
    policy = StalenessPolicy()
    stamp = lambda: store.stamp("images/42")  # noqa: E731
    assert stale_reason(report, stamp, time.time(), policy) is None
    store.delete([rest[0]])
    assert stale_reason(report, stamp, time.time(), policy) == "files_changed"


def test_a_full_scratch_disk_fails_clearly_and_publishes_nothing_partial(
    instance, s3_data_dir, shard_folder, image_web, monkeypatch, tmp_path
):
    monkeypatch.setenv("MMC4_DOCS_URL", str(shard_folder))
    monkeypatch.setenv("MMC4_ALLOW_PRIVATE_NETWORKS", "1")
    assert materialize_shard(instance, "raw_docs").success
    small = tmp_path / "small"
    mount_tmpfs(small, "2m")
    try:
        monkeypatch.setenv("MMC4_SCRATCH_DIR", str(small))
        result = materialize_shard(
            instance, "downloaded_images status_report", raise_on_error=False
        )
        assert not result.success
        (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        message = failure.step_failure_data.user_failure_data.description
        assert f"The scratch disk {small} (data on {s3_data_dir}) is full" in message
        assert "MMC4_SCRATCH_DIR" in message
        assert list(small.iterdir()) == []  # the scratch folder went with the step
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False, capture_output=True)
    store = open_store(s3_data_dir)
    assert store.listing("status") == {}
    for rel in store.listing("images/42"):  # uploaded before the disk filled: whole images
        with Image.open(io.BytesIO(store.fs.cat(store._key(rel)))) as image:
            image.load()
