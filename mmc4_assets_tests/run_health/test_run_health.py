"""Which runs are dead, and what failing them releases: runs and worker records in a real instance.

The kill tests (test_crash_safety.py) cover runs on this host; here worker records written as
another host would write them show how runs elsewhere are judged: by their heartbeat alone.
"""

from __future__ import annotations

import os
import re
import time
import uuid

import dagster as dg
import psutil

from mmc4_assets.run_health import (
    Machine,
    RunHealth,
    WorkerRecord,
    live_runs,
    record_key,
)
from mmc4_assets.sensors import dead_runs_sensor

OURS = frozenset({dg.AssetKey("downloaded_images"), dg.AssetKey("status_report")})


def started_run(
    instance: dg.DagsterInstance,
    asset_selection=OURS,
    status: dg.DagsterRunStatus = dg.DagsterRunStatus.STARTED,
) -> str:
    run_id = str(uuid.uuid4())
    instance.add_run(
        dg.DagsterRun(
            job_name="__ASSET_JOB",
            run_id=run_id,
            status=status,
            asset_selection=asset_selection,
            tags={"dagster/partition": "42"},
        )
    )
    return run_id


def record(instance: dg.DagsterInstance, run_id: str, **fields) -> None:
    here = Machine.here()
    me = os.getpid(), psutil.Process().create_time()
    worker = WorkerRecord(
        **{"host": here.host, "boot": here.boot, "processes": [me], "beat": time.time(), **fields}
    )
    key = record_key(run_id, "download_images")
    instance.run_storage.set_cursor_values({key: worker.to_json()})


def status(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus:
    return instance.get_run_by_id(run_id).status


def test_dead_runs_are_told_apart_from_live_ones(instance):
    now, here = time.time(), Machine.here()
    stale_elsewhere = started_run(instance)
    record(instance, stale_elsewhere, host="elsewhere", processes=[(4242, 1.0)], beat=now - 300)
    fresh_elsewhere = started_run(instance)
    record(instance, fresh_elsewhere, host="elsewhere", processes=[(4242, 1.0)], beat=now - 5)
    alive_here = started_run(instance)
    record(instance, alive_here, beat=now - 3600)  # a live process needs no fresh heartbeat
    pid_reused = started_run(instance)
    record(instance, pid_reused, processes=[(os.getpid(), psutil.Process().create_time() - 999)])
    rebooted = started_run(instance)
    record(instance, rebooted, boot=here.boot - 86400)
    canceling = started_run(instance, status=dg.DagsterRunStatus.CANCELING)
    record(instance, canceling, host="elsewhere", processes=[(4242, 1.0)], beat=now - 300)

    cleaned = RunHealth(dead_after_seconds=120).reap_dead_runs(instance, by="a test")

    assert status(instance, stale_elsewhere) == dg.DagsterRunStatus.FAILURE
    assert status(instance, pid_reused) == dg.DagsterRunStatus.FAILURE
    assert status(instance, rebooted) == dg.DagsterRunStatus.FAILURE
    assert status(instance, canceling) == dg.DagsterRunStatus.CANCELED
    assert status(instance, fresh_elsewhere) == dg.DagsterRunStatus.STARTED
    assert status(instance, alive_here) == dg.DagsterRunStatus.STARTED
    by_run = {line.split()[1]: line for line in cleaned}
    assert len(by_run) == 4
    stale = by_run[stale_elsewhere[:8]]
    assert re.search(r"no heartbeat from host elsewhere, pid 4242 for 3\d\d s", stale)
    assert "a run is declared dead after 120 s" in stale
    assert "its processes are gone" in by_run[pid_reused[:8]]
    assert f"{here.host} rebooted since it started" in by_run[rebooted[:8]]
    (failure,) = instance.all_logs(stale_elsewhere, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert failure.message.startswith("Run worker gone: no heartbeat from host elsewhere")
    assert "Marked by a test" in failure.message
    # Failed as a crash, not as a step failure: run retries (dagster.yaml) retry it.
    run = instance.get_run_by_id(stale_elsewhere)
    assert run.tags["dagster/failure_reason"] == "UNEXPECTED_TERMINATION"


def test_a_run_that_never_reported_is_dead_only_if_it_runs_these_assets(instance):
    silent = started_run(instance)
    someone_elses = started_run(instance, asset_selection=frozenset({dg.AssetKey("other")}))
    health = RunHealth(dead_after_seconds=120)
    assert health.reap_dead_runs(instance, by="a test") == []  # too young to tell
    time.sleep(1.5)
    cleaned = RunHealth(dead_after_seconds=1).reap_dead_runs(instance, by="a test")
    assert status(instance, silent) == dg.DagsterRunStatus.FAILURE
    assert status(instance, someone_elses) == dg.DagsterRunStatus.STARTED
    (line,) = cleaned
    assert "no step of it reported a heartbeat" in line


def test_failing_a_dead_run_frees_its_pool_slots(instance):
    dead = started_run(instance)
    record(instance, dead, host="elsewhere", processes=[(4242, 1.0)], beat=time.time() - 300)
    waiting = started_run(instance)
    record(instance, waiting)
    storage = instance.event_log_storage
    storage.set_concurrency_slots("mmc4_download", 1)
    assert storage.claim_concurrency_slot("mmc4_download", dead, "download_images").is_claimed
    claim = storage.claim_concurrency_slot("mmc4_download", waiting, "download_images")
    assert not claim.is_claimed

    (line,) = RunHealth().reap_dead_runs(instance, by="a test")

    assert "freed mmc4_download" in line
    info = storage.get_concurrency_info("mmc4_download")
    assert info.claimed_slots == []
    assert [step.run_id for step in info.pending_steps] == [waiting]  # the next in line
    assert storage.claim_concurrency_slot("mmc4_download", waiting, "download_images").is_claimed


def test_the_sensor_fails_dead_runs_and_says_which(instance):
    dead = started_run(instance)
    record(instance, dead, host="elsewhere", processes=[(4242, 1.0)], beat=time.time() - 300)
    alive = started_run(instance)
    record(instance, alive)
    resources = {"run_health": RunHealth()}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = dead_runs_sensor(context)
    assert result.skip_message.startswith(f"failed 1 dead run(s): run {dead[:8]} (shard 42)")
    assert [run.run_id for run in live_runs(instance)] == [alive]
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        assert dead_runs_sensor(context).skip_message == "no dead runs"
