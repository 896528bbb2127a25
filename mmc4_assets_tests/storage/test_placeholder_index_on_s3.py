"""placeholder_index with MMC4_DATA_DIR=s3://bucket/prefix, on a real S3 server (SeaweedFS): the
status tables are read from the bucket, the index is one object in it, and a download run reads
it: a plain rerun deletes the object of an image the index lists, without a request."""

from __future__ import annotations

import pytest

from mmc4_assets.storage import open_store
from mmc4_assets_tests.assets.test_placeholder_index import (
    assert_index_built,
    rerun_marks_from_the_index,
    write_corpus,
)

pytestmark = pytest.mark.system


def test_the_index_reads_and_writes_the_bucket(instance, s3_data_dir, tmp_path):
    store = open_store(s3_data_dir)
    write_corpus(store, instance)
    assert_index_built(instance, store, s3_data_dir)
    assert "placeholders/index.parquet" in store.listing("placeholders")
    assert not (tmp_path / "data").exists()
    assert not any((tmp_path / "scratch").iterdir())  # every scratch folder was removed


def test_a_rerun_marks_the_bucket_s_images_from_the_index(
    instance, s3_data_dir, shard_folder, image_web, monkeypatch, tmp_path
):
    monkeypatch.setenv("MMC4_DOCS_URL", str(shard_folder))
    monkeypatch.setenv("MMC4_ALLOW_PRIVATE_NETWORKS", "1")
    rerun_marks_from_the_index(instance, open_store(s3_data_dir), shard_folder, image_web)
    assert not (tmp_path / "data").exists()
