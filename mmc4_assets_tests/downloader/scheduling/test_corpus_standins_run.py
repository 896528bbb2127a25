"""Shard runs consult the corpus stand-in index, on a real server on 127.0.0.x: a stand-in too thin
for any one shard is indexed from the shards' real status tables, and a plain rerun re-marks the
images a shard holds from the index without a request to the web."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from mmc4_assets.corpus.placeholder_index import build_placeholder_index, standin_bodies
from mmc4_assets.corpus.status import check_status, status_parquet_path, write_status
from mmc4_assets.downloader import download_shard
from mmc4_assets.downloader.refs import ImageRef
from mmc4_assets_tests.downloader.scheduling.test_standins_run import (
    NO_HOTLINKING,
    OTHER,
    PHOTO,
    SETTINGS,
)
from mmc4_assets_tests.support.local_server import send

SHARDS = range(1, 6)


def shard_refs(web, shard: int) -> list[ImageRef]:
    """Three documents with one URL of the thin stand-in each (too few for the shard's rule), a
    real photo at one URL in every shard, and a photo of the shard's own."""
    refs = [ImageRef(doc, 0, f"{doc}_0.img", web.url(f"/s{shard}/{doc}.jpg")) for doc in range(3)]
    refs.append(ImageRef(3, 0, "3_0.img", web.url("/photo.jpg")))
    refs.append(ImageRef(4, 0, "4_0.img", web.url(f"/own/{shard}.jpg")))
    return refs


def test_the_index_marks_a_thin_standin_in_every_shard_without_fetching_it(server, tmp_path):
    routes = {"/photo.jpg": lambda h: send(h, 200, PHOTO)}
    for shard in (*SHARDS, 6):
        routes[f"/own/{shard}.jpg"] = lambda h: send(h, 200, OTHER)
        for doc in range(3):
            routes[f"/s{shard}/{doc}.jpg"] = lambda h: send(h, 200, NO_HOTLINKING)
    web = server(routes, host="127.0.0.2")

    for shard in SHARDS:  # no shard sees the stand-in often enough: all ok
        table = download_shard(
            shard_refs(web, shard), data_dir=tmp_path, shard=shard, settings=SETTINGS
        )
        assert set(table["outcome"]) == {"ok"}
        write_status(table, tmp_path, shard)

    statuses = [pq.read_table(status_parquet_path(tmp_path, shard)) for shard in SHARDS]
    index = build_placeholder_index(statuses)
    assert index["urls"].to_pylist() == [15] and index["shards"].to_pylist() == [5]
    standins = standin_bodies(index)

    # A plain rerun re-marks the images the shard holds, and asks nothing of the web.
    fetched = web.fetches()
    refs = shard_refs(web, 1)
    again = download_shard(
        refs, data_dir=tmp_path, shard=1, settings=SETTINGS, known_standins=standins
    )
    assert web.fetches() == fetched
    assert_marked(again, refs, tmp_path, shard=1)

    # A shard downloaded after the index marks the stand-in as it arrives.
    refs = shard_refs(web, 6)
    fresh = download_shard(
        refs, data_dir=tmp_path, shard=6, settings=SETTINGS, known_standins=standins
    )
    assert_marked(fresh, refs, tmp_path, shard=6)
    assert web.count("/s6/0.jpg") == 1


def assert_marked(table, refs, data_dir: Path, shard: int) -> None:
    outcomes = dict(zip(table["image_name"], table["outcome"], strict=True))
    assert outcomes == {
        "0_0.img": "placeholder",
        "1_0.img": "placeholder",
        "2_0.img": "placeholder",
        "3_0.img": "ok",
        "4_0.img": "ok",
    }
    marked = table[table["outcome"] == "placeholder"]
    assert (marked["error"] == "stand-in: in the corpus index").all()
    assert marked["path"].isna().all() and marked["body_sha256"].notna().all()
    kept = {str(p.relative_to(data_dir)) for p in (data_dir / f"images/{shard}").iterdir()}
    assert kept == set(table.loc[table["outcome"] == "ok", "path"])
    assert check_status(table, refs, data_dir) == []
