"""placeholder_index reads every materialized shard's status table through the data store and
writes the corpus stand-in index, on a real Dagster instance over real status parquet files."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmc4_assets.assets.images import STATUS_REPORT
from mmc4_assets.corpus.status import write_status
from mmc4_assets.resources import CorpusStorage
from mmc4_assets.storage import DataStore, layout, open_store
from mmc4_assets.storage.placeholders import known_standins
from mmc4_assets_tests.support.materialize import latest_metadata, materialize_shard
from mmc4_assets_tests.support.shards import write_image_shard

STANDIN = hashlib.sha256(b"a CDN's default image").hexdigest()
PHOTO = hashlib.sha256(b"a real photo").hexdigest()


def status_rows(shard: int, images: list[tuple[str, str]]) -> pd.DataFrame:
    """A shard's status table: its own photos, then ``images`` (url, body_sha256), all ok."""
    own = [(f"https://photos.example/{shard}/{n}.jpg", f"{shard}-{n}") for n in range(30)]
    rows = []
    for doc, (url, body) in enumerate(own + images):
        sha = body if len(body) == 64 else hashlib.sha256(body.encode()).hexdigest()
        rows.append(
            {
                "shard": shard,
                "doc": doc,
                "index": 0,
                "image_name": f"{doc}.jpg",
                "url": url,
                "outcome": "ok",
                "path": f"images/{shard}/{doc}.jpg",
                "fetched_at": datetime(2026, 12, 1, tzinfo=UTC),
                "attempts": 1,
                "body_sha256": sha,
                "final_url": url,
            }
        )
    return pd.DataFrame(rows)


def write_corpus(store: DataStore, instance: dg.DagsterInstance) -> None:
    """Shards 1-5 each hold a stand-in at 2 or 3 URLs of their own (13 in all); shards 6-25
    the same real photo at one URL. Each is recorded as a status_report materialization, and so
    is shard 26, whose table is not there."""
    for shard in range(1, 27):
        if shard <= 5:
            urls = [f"https://cdn.example/{shard}/{n}.png" for n in range(2 + shard % 2)]
            extra = [(url, STANDIN) for url in urls]
        else:
            extra = [("https://news.example/famous.jpg", PHOTO)] * 2
        if shard != 26:
            with store.workspace() as work:
                write_status(status_rows(shard, extra), work, shard)
                store.publish(work, [layout.status_parquet(shard), layout.status_tsv(shard)])
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key=STATUS_REPORT, partition=str(shard))
        )


def assert_index_built(instance: dg.DagsterInstance, store: DataStore, data_dir: str) -> None:
    storage = CorpusStorage(data_dir=data_dir)
    assert materialize_shard(instance, "placeholder_index", partition=None, storage=storage).success
    meta = latest_metadata(instance, "placeholder_index", partition=None)
    assert meta["bodies_indexed"] == 1
    assert meta["standin_urls"] == 13
    assert meta["shards_read"] == 25
    assert meta["shards_missing"] == 1
    assert meta["seconds"] >= 0
    assert meta["path"] == store.url("placeholders/index.parquet")
    assert known_standins(store) == {STANDIN}


def test_the_index_catches_a_thin_standin_and_not_a_photo_in_many_shards(instance, tmp_path):
    data_dir = str(tmp_path / "data")
    store = open_store(data_dir)
    assert known_standins(store) == frozenset()  # before the first index
    write_corpus(store, instance)
    assert_index_built(instance, store, data_dir)
    index = pq.read_table(tmp_path / "data" / "placeholders" / "index.parquet").to_pylist()
    assert index == [
        {
            "body_sha256": STANDIN,
            "urls": 13,
            "shards": 5,
            "example_url": "https://cdn.example/1/0.png",
        }
    ]


def test_a_higher_threshold_and_an_empty_corpus(instance, tmp_path):
    data_dir = str(tmp_path / "data")
    storage = CorpusStorage(data_dir=data_dir)
    assert materialize_shard(instance, "placeholder_index", partition=None, storage=storage).success
    assert latest_metadata(instance, "placeholder_index", partition=None)["shards_read"] == 0
    store = open_store(data_dir)
    write_corpus(store, instance)
    config = {"ops": {"placeholder_index": {"config": {"min_urls": 14}}}}
    result = materialize_shard(
        instance, "placeholder_index", partition=None, storage=storage, run_config=config
    )
    assert result.success
    assert latest_metadata(instance, "placeholder_index", partition=None)["bodies_indexed"] == 0
    assert known_standins(store) == frozenset()


def stored_status(store: DataStore, shard: int) -> pd.DataFrame:
    rel = layout.status_parquet(shard)
    return pq.read_table(pa.BufferReader(store.read_many([rel])[rel])).to_pandas()


def rerun_marks_from_the_index(instance, store: DataStore, shard_folder, image_web) -> None:
    """One picture at one URL of each of two hosts (shards 43 and 44): a stand-in at min_urls 2.
    After the index, a plain rerun of shard 43 marks it from the index and asks the web nothing;
    its file is gone from the data folder."""
    pipeline = "raw_docs downloaded_images status_report"
    for shard, host in ((43, 0), (44, 1)):
        urls = [
            image_web.url(host, "/img/120x80/7.jpg"),
            image_web.url(host, f"/img/90x90/{shard}.png"),
        ]
        write_image_shard(shard_folder, shard, urls)
        assert materialize_shard(instance, pipeline, str(shard)).success
    before = stored_status(store, 43)
    assert set(before["outcome"]) == {"ok"}
    assert set(store.listing("images/43")) == set(before["path"])
    config = {"ops": {"placeholder_index": {"config": {"min_urls": 2}}}}
    assert materialize_shard(
        instance, "placeholder_index", partition=None, run_config=config
    ).success
    assert known_standins(store) == {before["body_sha256"][0]}

    fetched = image_web.total_requests
    result = materialize_shard(instance, "downloaded_images status_report", "43")
    assert result.success  # with its checks: one status per image, every ok row's file there
    assert image_web.total_requests == fetched
    after = stored_status(store, 43)
    assert list(after["outcome"]) == ["placeholder", "ok"]
    assert after["error"][0] == "stand-in: in the corpus index"
    assert set(store.listing("images/43")) == {after["path"][1]}
    assert latest_metadata(instance, "status_report", "43")["outcome_placeholder"] == 1


def test_downloads_read_the_latest_index_and_rerun_shards_without_fetching(
    instance, pipeline_env, shard_folder, image_web
):
    rerun_marks_from_the_index(instance, open_store(pipeline_env), shard_folder, image_web)
