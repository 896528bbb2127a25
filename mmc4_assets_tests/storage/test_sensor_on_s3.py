"""The stale-image sensor and its runs with MMC4_DATA_DIR on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import io
from collections import Counter

import pyarrow.parquet as pq
import pytest

from mmc4_assets.storage import open_store
from mmc4_assets_tests.support.materialize import materialize_shard
from mmc4_assets_tests.support.shards import write_image_shard
from mmc4_assets_tests.test_sensors import (
    EVERYTHING_OLD,
    FRESH,
    PIPELINE,
    ImageHost,
    run_request,
    tick,
)

pytestmark = pytest.mark.system


@pytest.fixture
def host():
    image_host = ImageHost()
    yield image_host
    image_host.server.shutdown()


def outcomes(store, shard: int) -> list[str]:
    body = store.fs.cat(store._key(f"status/{shard}.parquet"))
    return list(pq.read_table(io.BytesIO(body)).to_pandas().sort_values("doc")["outcome"])


def use_docs(monkeypatch, shard_folder) -> None:
    monkeypatch.setenv("MMC4_DOCS_URL", str(shard_folder))
    monkeypatch.setenv("MMC4_ALLOW_PRIVATE_NETWORKS", "1")


def test_a_deleted_object_requests_one_run_that_restores_it(
    instance, s3_data_dir, shard_folder, host, monkeypatch
):
    use_docs(monkeypatch, shard_folder)
    store = open_store(s3_data_dir)
    write_image_shard(shard_folder, 43, host.urls("a", "b", "c"))
    assert materialize_shard(instance, PIPELINE, "43").success
    assert tick(instance, FRESH).run_requests == []
    store.delete(["images/43/img0001.jpg"])

    requests = tick(instance, FRESH).run_requests
    assert len(requests) == 1 and requests[0].tags["mmc4/stale_reason"] == "files_changed"
    host.requests.clear()
    assert run_request(instance, requests[0], FRESH).success
    assert host.requests == Counter({"/b.jpg": 1})
    assert "images/43/img0001.jpg" in store.listing("images/43")
    assert tick(instance, FRESH).run_requests == []


def test_a_404_on_revalidation_marks_gone_and_deletes_the_object(
    instance, s3_data_dir, shard_folder, host, monkeypatch
):
    use_docs(monkeypatch, shard_folder)
    store = open_store(s3_data_dir)
    write_image_shard(shard_folder, 43, host.urls("a", "b"))
    assert materialize_shard(instance, PIPELINE, "43").success
    host.modes["/a.jpg"] = "404"
    host.requests.clear()
    (request,) = tick(instance, EVERYTHING_OLD).run_requests
    assert run_request(instance, request, EVERYTHING_OLD).success
    assert outcomes(store, 43) == ["gone", "ok"]
    assert set(store.listing("images/43")) == {"images/43/img0001.jpg"}
    # Both were revalidated with a conditional request; the held copy of b answered 304.
    assert host.conditional["/b.jpg"] >= 1
