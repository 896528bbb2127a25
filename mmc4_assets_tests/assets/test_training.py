"""training_shards materialized in process after the real pipeline (loopback images), then read
back the way OpenFlamingo's mmc4 loader reads it."""

from __future__ import annotations

import base64
import hashlib
import json

from mmc4_assets.corpus.status import read_status
from mmc4_assets.resources import TrainingShardSettings
from mmc4_assets_tests.support.materialize import latest_metadata, materialize_shard
from mmc4_assets_tests.support.openflamingo_reader import (
    check_sample,
    iter_file_members,
    iter_json_samples,
    split_key,
)

PIPELINE = "raw_docs reassigned_docs downloaded_images status_report training_shards"


def _tars(data_dir) -> list[str]:
    return sorted(str(p) for p in (data_dir / "webdataset").glob("42-*.tar"))


def _digests(data_dir) -> dict[str, str]:
    files = sorted((data_dir / "webdataset").iterdir())
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_training_shards_read_back_as_openflamingo_reads_them(instance, pipeline_env, image_web):
    result = materialize_shard(instance, PIPELINE)
    assert result.success
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations["training_shards_match_their_counts"] is True

    status = read_status(pipeline_env, 42)
    held = {
        (row.doc, row.index): pipeline_env / row.path
        for row in status.itertuples()
        if row.outcome == "ok"
    }
    lines = (pipeline_env / "reassigned_docs" / "42.jsonl").read_text().splitlines()
    with_images = [n for n, line in enumerate(lines) if json.loads(line)["image_info"]]
    assert len(held) == len(status) > 0  # the loopback web serves every image

    tars = _tars(pipeline_env)
    assert [m["fname"].split(".", 1)[1] for m in iter_file_members(tars)] == ["json"] * len(
        with_images
    )
    seen, below_floor = [], 0
    for key, payload in iter_json_samples(tars):
        shard, line = split_key(key)
        assert shard == 42
        checked = check_sample(payload)
        below_floor += checked["below_floor"]
        document = checked["document"]
        for index, entry in enumerate(document["image_info"]):
            assert base64.b64decode(entry.pop("image_base64")) == held[line, index].read_bytes()
        assert document == json.loads(lines[line])
        seen.append(line)
    assert seen == with_images  # every document with an image, in line order

    meta = latest_metadata(instance, "training_shards")
    assert meta["samples"] == len(with_images)
    assert meta["documents"] == len(lines)
    assert meta["left_out_no_images"] == len(lines) - len(with_images)
    assert meta["images_embedded"] == len(held)
    assert meta["images_below_loader_floor"] == below_floor
    assert meta["images_missing"] == meta["images_not_matching_status"] == 0
    assert meta["parts"] == len(tars) == 1
    sizes = json.loads((pipeline_env / "webdataset" / "42.sizes.json").read_text())
    assert sizes == {"42-000.tar": len(with_images)}


def test_rematerializing_is_byte_identical_and_counts_deleted_images(
    instance, pipeline_env, image_web
):
    assert materialize_shard(instance, PIPELINE).success
    first = _digests(pipeline_env)
    embedded = latest_metadata(instance, "training_shards")["images_embedded"]
    small = TrainingShardSettings(documents_per_part=10)
    assert materialize_shard(instance, "training_shards", training_shard_settings=small).success
    split = json.loads((pipeline_env / "webdataset" / "42.sizes.json").read_text())
    assert len(split) > 1 and all(count <= 10 for count in split.values())
    assert len(_tars(pipeline_env)) == len(split)
    assert materialize_shard(instance, "training_shards").success
    assert _digests(pipeline_env) == first

    # Images deleted after the download are counted, not fatal; the check still passes.
    for path in read_status(pipeline_env, 42)["path"].dropna()[:3]:
        (pipeline_env / path).unlink()
    result = materialize_shard(instance, "training_shards")
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations())
    meta = latest_metadata(instance, "training_shards")
    assert meta["images_missing"] == 3
    assert meta["images_embedded"] == embedded - 3


def test_a_shard_without_status_table_fails_with_a_clear_error(instance, pipeline_env):
    assert materialize_shard(instance, "raw_docs reassigned_docs").success
    result = materialize_shard(instance, "training_shards", raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "materialize reassigned_docs and status_report" in str(failure.step_failure_data.error)
    assert not (pipeline_env / "webdataset").exists()
