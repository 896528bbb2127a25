"""Backfills of shard ranges on the Postgres instance, as a deployment runs them.

A real dagster-webserver and dagster-daemon share the Postgres database (nothing else: each reads
deploy/postgres/dagster.yaml and the DAGSTER_PG_* variables). Two backfills are launched the way
the UI's "Materialize" dialog launches them, with GraphQL's `launchPartitionBackfill`: the docs
stages of 8 shards, and the whole pipeline of 10 other shards tagged `mmc4/stage=download` (the
tag the schedule and the sensor put on download runs). The daemon turns them into runs of up to 8
shards (BackfillPolicy.multi_run(8)): one docs run and two download runs, queued together. The
run records then show several runs at once, and never two download runs at once (the tag limit
is 1) although the run limit (4) would allow all three.
"""

from __future__ import annotations

import time

import dagster as dg
import pytest

from mmc4_assets.corpus.status import read_status
from mmc4_assets_tests.support.shards import zip_shard
from mmc4_assets_tests.test_webserver import (
    BIN,
    Stack,
    run_failure_details,
    running_stack,
    wait_for_server,
)
from mmc4_devtools.sample_shard import write_sample_shard

pytestmark = pytest.mark.system

DOCS = ["raw_docs", "reassigned_docs"]
PIPELINE = [*DOCS, "downloaded_images", "status_report"]
DOCS_SHARDS = [str(shard) for shard in range(100, 108)]  # one run
DOWNLOAD_SHARDS = [str(shard) for shard in range(200, 210)]  # two runs: 8 shards, then 2
# Each run executes its steps in its own process: the default executor would start one more
# Python process per step, which is the executor's cost and not what this test is about.
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}
BACKFILL_TIMEOUT = 420.0
DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

LAUNCH_BACKFILL = """
mutation LaunchBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}
"""

BACKFILL_STATUS = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status runs { runId status } error { message } }
    ... on PythonError { message }
  }
}
"""


def launch_backfill(stack: Stack, assets: list[str], shards: list[str], tags: dict) -> str:
    """What the UI sends for "Materialize" on a partition range of the selected assets."""
    params = {
        "assetSelection": [{"path": [name]} for name in assets],
        "partitionNames": shards,
        "fromFailure": False,
        "runConfigData": IN_PROCESS,
        "tags": [{"key": key, "value": value} for key, value in tags.items()],
    }
    launched = stack.graphql(LAUNCH_BACKFILL, {"params": params}, timeout=120)
    result = launched["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", f"{result}\n{stack.diagnostics()}"
    return result["backfillId"]


def wait_for_backfills(stack: Stack, backfill_ids: list[str]) -> dict[str, dict]:
    deadline = time.monotonic() + BACKFILL_TIMEOUT
    backfills: dict[str, dict] = {}
    while time.monotonic() < deadline:
        stack.check_alive()
        for backfill_id in backfill_ids:
            data = stack.graphql(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
            assert data["__typename"] == "PartitionBackfill", data
            backfills[backfill_id] = data
        if all(backfill["status"] in DONE for backfill in backfills.values()):
            return backfills
        time.sleep(1.0)
    raise AssertionError(f"backfills not done: {backfills}\n{stack.diagnostics()}")


def most_at_once(instance: dg.DagsterInstance, records: list[dg.RunRecord]) -> int:
    """The largest number of runs in progress at the same moment, as the queue counts them: from
    leaving the queue (the daemon's RUN_STARTING event) to the run's end."""
    edges = []
    for record in records:
        (starting,) = instance.get_records_for_run(
            record.dagster_run.run_id, of_type=dg.DagsterEventType.RUN_STARTING
        ).records
        edges += [(starting.timestamp, 1), (record.end_time, -1)]
    edges.sort()  # at equal times an end (-1) sorts before a start (+1): a handover is no overlap
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def write_shards(folder, shards: list[str], image_base_url: str) -> None:
    for shard in shards:
        plain = folder / f"docs_no_face_shard_{shard}_v2.jsonl"
        write_sample_shard(plain, documents=4, seed=int(shard), image_base_url=image_base_url)
        zip_shard(plain)


@pytest.mark.timeout(900)
def assert_backfills_succeeded(stack: Stack, backfills: dict[str, dict]) -> None:
    """Every backfill completed; otherwise the failure names each failed run's reason."""
    for backfill in backfills.values():
        failures = "\n".join(
            run_failure_details(stack, run["runId"])
            for run in backfill["runs"]
            if run["status"] != "SUCCESS"
        )
        assert backfill["status"] == "COMPLETED_SUCCESS", f"{backfill}\n{failures}"


@pytest.mark.system(order=4)
def test_ui_backfills_run_in_parallel_within_the_queue_limits(
    postgres_home, postgres_instance, tmp_path, shard_folder, docs_server, image_web
):
    write_shards(shard_folder, DOCS_SHARDS + DOWNLOAD_SHARDS, image_web.base_urls[0])
    with running_stack(postgres_home.env, tmp_path, docs_server) as stack:
        stack.start(
            "webserver",
            [
                str(BIN / "dagster-webserver"),
                *("-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(stack.port)),
            ],
        )
        wait_for_server(stack)

        docs_backfill = launch_backfill(stack, DOCS, DOCS_SHARDS, {})
        download_backfill = launch_backfill(
            stack, PIPELINE, DOWNLOAD_SHARDS, {"mmc4/stage": "download"}
        )
        # The daemon starts after the launch: its first backfill iteration (then one every 30 s)
        # picks both backfills up at once.
        stack.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"])
        backfills = wait_for_backfills(stack, [docs_backfill, download_backfill])
        assert_backfills_succeeded(stack, backfills)

    records = postgres_instance.get_run_records()
    by_backfill = {
        backfill: [r for r in records if r.dagster_run.tags.get("dagster/backfill") == backfill]
        for backfill in (docs_backfill, download_backfill)
    }
    assert len(records) == 3, [r.dagster_run.tags for r in records]
    assert len(by_backfill[docs_backfill]) == 1 and len(by_backfill[download_backfill]) == 2
    assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records)
    downloads = by_backfill[download_backfill]
    assert all(r.dagster_run.tags["mmc4/stage"] == "download" for r in downloads)

    # The queue's limits, seen in the run records (dagster.yaml: 4 runs, 1 download run).
    assert 2 <= most_at_once(postgres_instance, records) <= 4
    assert most_at_once(postgres_instance, downloads) == 1

    # Every shard's outputs, and the materializations the UI shows.
    data_dir = stack.data_dir
    for shard in DOCS_SHARDS + DOWNLOAD_SHARDS:
        assert (data_dir / "raw_docs" / f"{shard}.jsonl").is_file()
        assert (data_dir / "reassigned_docs" / f"{shard}.jsonl").is_file()
    for shard in DOWNLOAD_SHARDS:
        table = read_status(data_dir, int(shard))
        assert table is not None and len(table) > 0 and (table["outcome"] == "ok").all()
    assert not (data_dir / "status" / f"{DOCS_SHARDS[0]}.parquet").exists()
    materialized = postgres_instance.get_materialized_partitions(dg.AssetKey("status_report"))
    assert materialized == set(DOWNLOAD_SHARDS)
    assert postgres_instance.get_materialized_partitions(dg.AssetKey("reassigned_docs")) == set(
        DOCS_SHARDS + DOWNLOAD_SHARDS
    )
