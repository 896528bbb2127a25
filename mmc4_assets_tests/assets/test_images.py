"""downloaded_images and status_report materialized in process against a loopback image host."""

from __future__ import annotations

import gzip

import pandas as pd
from PIL import Image

from mmc4_assets.corpus.status import read_status
from mmc4_assets.downloader.refs import iter_image_refs
from mmc4_assets_tests.support.materialize import latest_metadata, materialize_shard
from mmc4_assets_tests.support.shards import write_image_shard

PIPELINE = "raw_docs downloaded_images status_report"


def test_shard_images_download_with_status_and_checks(instance, pipeline_env, image_web):
    result = materialize_shard(instance, PIPELINE)
    assert result.success
    refs = list(iter_image_refs(pipeline_env / "raw_docs" / "42.jsonl"))
    table = read_status(pipeline_env, 42)
    assert len(table) == len(refs) > 0
    assert set(table["outcome"]) == {"ok"}
    for row in table.itertuples():
        with Image.open(pipeline_env / row.path) as image:
            assert max(image.size) <= 800
            assert image.size == (row.width, row.height)
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations == {"every_image_has_one_status": True}

    images_meta = latest_metadata(instance, "downloaded_images")
    assert images_meta["images"] == images_meta["ok"] == len(refs)
    assert images_meta["success_percent"] == 100.0
    assert images_meta["images_per_second"] > 0
    report_meta = latest_metadata(instance, "status_report")
    assert f"| ok | {len(refs)} |" in report_meta["outcomes"]
    assert report_meta["oldest_ok_at"] > 0 and report_meta["earliest_retryable_at"] == -1.0

    with gzip.open(pipeline_env / "status" / "42.tsv.gz", "rt") as handle:
        tsv = pd.read_csv(handle, sep="\t", header=None)
    assert len(tsv) == len(refs) and tsv.shape[1] == 7
    assert set(tsv[5]) == {200}


def test_rerun_fetches_nothing_already_valid(instance, pipeline_env, image_web):
    assert materialize_shard(instance, PIPELINE).success
    first = image_web.total_requests
    assert first > 0
    assert materialize_shard(instance, "downloaded_images status_report").success
    assert image_web.total_requests == first
    assert set(read_status(pipeline_env, 42)["outcome"]) == {"ok"}


def test_faults_are_recorded_and_the_run_still_succeeds(
    instance, pipeline_env, image_web, shard_folder
):
    web = image_web
    urls = [
        web.url(0, "/img/300x200/1.jpg"),
        web.url(1, "/fault/404/a.jpg"),
        web.url(0, "/fault/html/b.jpg"),
        web.url(1, "/fault/bomb.png"),
        "ftp://example.org/x.jpg",
    ]
    write_image_shard(shard_folder, 43, urls)
    result = materialize_shard(instance, PIPELINE, partition="43")
    assert result.success
    outcomes = list(read_status(pipeline_env, 43).sort_values("doc")["outcome"])
    assert outcomes[:4] == ["ok", "http_error", "not_image", "too_large"]
    assert outcomes[4] == "invalid_url"
    saved = sorted(p.name for p in (pipeline_env / "images" / "43").iterdir())
    assert saved == ["img0000.jpg"]


def test_private_addresses_are_refused_by_default(instance, pipeline_env, image_web, monkeypatch):
    monkeypatch.delenv("MMC4_ALLOW_PRIVATE_NETWORKS")
    assert materialize_shard(instance, PIPELINE).success
    assert set(read_status(pipeline_env, 42)["outcome"]) == {"blocked"}
    assert image_web.total_requests == 0
    assert not any((pipeline_env / "images" / "42").glob("*"))
