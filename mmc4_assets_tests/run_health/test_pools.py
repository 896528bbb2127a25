"""The download pool's limit exists before the first queued run (run_health/pools.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg
import pytest

from mmc4_assets.run_health.pools import DOWNLOAD_POOL, ensure_pool_limits
from mmc4_assets_tests.support.instance_files import PROJECT_ROOT, write_home


def pool_limit(home) -> int | None:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        if DOWNLOAD_POOL not in storage.get_concurrency_keys():
            return None
        return storage.get_concurrency_info(DOWNLOAD_POOL).slot_count


def test_the_cli_gives_a_new_instance_its_pool_limit_and_keeps_an_operators(tmp_path):
    home = write_home(tmp_path / "home")
    assert pool_limit(home) is None  # a new instance: Dagster makes it only in the queue's tick
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    command = [sys.executable, "-m", "mmc4_assets.run_health.pools"]
    done = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"pool {DOWNLOAD_POOL}: limit 1"  # dagster.yaml's default_limit
    assert pool_limit(home) == 1
    with dg.DagsterInstance.from_config(str(home)) as instance:  # an operator raises it
        instance.event_log_storage.set_concurrency_slots(DOWNLOAD_POOL, 3)
        assert ensure_pool_limits(instance) == []
    again = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.strip() == ""
    assert pool_limit(home) == 3


@pytest.mark.system
def test_the_postgres_instance_gets_it_too(postgres_instance):
    assert ensure_pool_limits(postgres_instance) == [DOWNLOAD_POOL]
    info = postgres_instance.event_log_storage.get_concurrency_info(DOWNLOAD_POOL)
    assert info.slot_count == 1
    assert ensure_pool_limits(postgres_instance) == []
