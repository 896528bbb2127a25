"""placeholder_index with MMC4_DATA_DIR=s3://bucket/prefix, on a real S3 server (SeaweedFS): the
status tables are read from the bucket and the index is one object in it."""

from __future__ import annotations

import pytest

from mmc4_assets.storage import open_store
from mmc4_assets_tests.assets.test_placeholder_index import assert_index_built, write_corpus

pytestmark = pytest.mark.system


def test_the_index_reads_and_writes_the_bucket(instance, s3_data_dir, tmp_path):
    store = open_store(s3_data_dir)
    write_corpus(store, instance)
    assert_index_built(instance, store, s3_data_dir)
    assert "placeholders/index.parquet" in store.listing("placeholders")
    assert not (tmp_path / "data").exists()
    assert not any((tmp_path / "scratch").iterdir())  # every scratch folder was removed
