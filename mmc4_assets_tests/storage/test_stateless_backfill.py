"""Stateless runs: a UI backfill whose runs share nothing but Postgres and the bucket.

A real dagster-webserver and dagster-daemon on the Postgres instance start in a fresh, empty
working directory with MMC4_DATA_DIR=s3://... (SeaweedFS); the runs they launch inherit that. Three
backfills of the whole pipeline (two shards each, launched as the UI does with GraphQL's
`launchPartitionBackfill`) become three runs; the `mmc4_download` pool is raised to 3, as a bigger
deployment would, so they run side by side. Afterwards every shard's outputs are in the bucket and
agree with each other, corpus_summary adds them up, nothing was written on the local disk, and a
stale-image run for one shard re-downloads only the image deleted from the bucket.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from mmc4_assets.sensors import STALE_RUN_CONFIG
from mmc4_assets.storage import open_store
from mmc4_assets_tests.support.materialize import latest_metadata, materialize_shard
from mmc4_assets_tests.support.servers.process import free_port
from mmc4_assets_tests.test_postgres_backfill import (
    assert_backfills_succeeded,
    launch_backfill,
    most_at_once,
    wait_for_backfills,
    write_shards,
)
from mmc4_assets_tests.test_webserver import (
    BIN,
    Stack,
    wait_for_server,
)

pytestmark = pytest.mark.system

PIPELINE = ["raw_docs", "reassigned_docs", "downloaded_images", "status_report", "training_shards"]
BATCHES = [["300", "301"], ["302", "303"], ["304", "305"]]
SHARDS = [shard for batch in BATCHES for shard in batch]


@dataclass
class EmptyDirStack(Stack):
    """A Stack whose processes start in `cwd`, an empty folder, not in the project."""

    cwd: Path | None = None

    def start(self, name: str, command: list[str]) -> None:
        self.logs[name] = self.log_dir / f"{name}.log"
        handle = open(self.logs[name], "wb")  # noqa: SIM115 - closed in stop()
        self._handles.append(handle)
        self.processes[name] = subprocess.Popen(
            command,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def bucket_table(store, shard: str):
    body = store.fs.cat(store._key(f"status/{shard}.parquet"))
    return pq.read_table(io.BytesIO(body)).to_pandas()


@pytest.mark.timeout(600)
@pytest.mark.system(order=3)
def test_backfill_runs_share_only_postgres_and_the_bucket(
    postgres_home,
    postgres_instance,
    seaweed,
    bucket,
    tmp_path,
    shard_folder,
    docs_server,
    image_web,
    monkeypatch,
):
    write_shards(shard_folder, SHARDS, image_web.base_urls[0])
    data_url = f"s3://{bucket}/mmc4"
    empty = tmp_path / "cwd"
    empty.mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {
        **os.environ,
        **postgres_home.env,
        **seaweed.env,
        "MMC4_DATA_DIR": data_url,
        "MMC4_SCRATCH_DIR": str(scratch),
        "MMC4_DOCS_URL": docs_server + "/docs_no_face_shard_{shard}_v2.jsonl.zip",
        "MMC4_ALLOW_PRIVATE_NETWORKS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    # Three download runs side by side, as on a bigger machine.
    postgres_instance.event_log_storage.set_concurrency_slots("mmc4_download", 3)
    stack = EmptyDirStack(port=free_port(), data_dir=empty, env=env, log_dir=logs, cwd=empty)
    try:
        serve = ["-m", "mmc4_assets"]
        stack.start(
            "webserver",
            [str(BIN / "dagster-webserver"), *serve, "-h", "127.0.0.1", "-p", str(stack.port)],
        )
        wait_for_server(stack)
        started = time.monotonic()
        backfills = [launch_backfill(stack, PIPELINE, batch, {}) for batch in BATCHES]
        stack.start("daemon", [str(BIN / "dagster-daemon"), "run", *serve])
        done = wait_for_backfills(stack, backfills)
        wall = time.monotonic() - started
        assert_backfills_succeeded(stack, done)
    finally:
        stack.stop()

    records = postgres_instance.get_run_records()
    assert len(records) == len(BATCHES)
    assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records)
    parallel = most_at_once(postgres_instance, records)
    print(
        f"\nstateless backfill: {len(SHARDS)} shards, {len(records)} runs, at most {parallel} "
        f"at once, {wall:.1f} s wall (launch to all backfills done)"
    )
    assert parallel >= 2

    # Everything is in the bucket; nothing was written where the processes ran.
    store = open_store(data_url)
    total = ok = nbytes = 0
    for shard in SHARDS:
        for rel in (f"raw_docs/{shard}.jsonl", f"reassigned_docs/{shard}.jsonl"):
            assert store.fs.size(store._key(rel)) > 0, rel
        assert f"status/{shard}.tsv.gz" in store.listing("status")
        assert f"webdataset/{shard}.sizes.json" in store.listing("webdataset")
        table = bucket_table(store, shard)
        good = table[table["outcome"] == "ok"]
        assert len(good) == len(table) > 0
        stored = store.listing(f"images/{shard}")
        assert dict(zip(good["path"], good["bytes"].astype(int), strict=True)) == stored
        total, ok, nbytes = total + len(table), ok + len(good), nbytes + int(good["bytes"].sum())
    assert sorted(p.name for p in empty.iterdir()) == [], list(empty.iterdir())
    assert list(scratch.iterdir()) == []

    # corpus_summary adds up the bucket's status tables.
    for key, value in env.items():
        if key.startswith(("MMC4_", "AWS_")):
            monkeypatch.setenv(key, value)
    assert materialize_shard(postgres_instance, "corpus_summary", partition=None).success
    summary = latest_metadata(postgres_instance, "corpus_summary", partition=None)
    assert (summary["shards"], summary["images"], summary["ok"], summary["bytes"]) == (
        len(SHARDS),
        total,
        ok,
        nbytes,
    )

    # A stale-image run for one shard re-downloads only the image deleted from the bucket.
    shard = SHARDS[-1]
    table = bucket_table(store, shard)
    gone = sorted(store.listing(f"images/{shard}"))[0]
    store.delete([gone])
    url = table.loc[table["path"] == gone, "url"].item()
    before, before_url = image_web.total_requests, image_web.requests_for(url)
    run = materialize_shard(
        postgres_instance,
        "downloaded_images status_report",
        partition=shard,
        run_config=STALE_RUN_CONFIG,
    )
    assert run.success
    assert image_web.total_requests - before == 1
    assert image_web.requests_for(url) == before_url + 1
    assert gone in store.listing(f"images/{shard}")
