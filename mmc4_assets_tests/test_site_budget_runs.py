"""Download runs launched from the CLI at once, on one instance, share each site's budget.

What a user on one machine does: several `dagster asset materialize` commands on one
DAGSTER_HOME. Their site ledger is the instance's (a SQLite file in its folder); a budget set by
MMC4_SITE_BUDGETS holds across all of them, and the runs' metadata says what politeness did.
"""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg
import pytest

from mmc4_assets_tests.support.instance_files import PROJECT_ROOT, write_home
from mmc4_assets_tests.support.local_server import LocalServer, image_bytes, image_routes
from mmc4_assets_tests.support.materialize import latest_metadata
from mmc4_assets_tests.support.shards import write_image_shard

pytestmark = pytest.mark.system

BIN = os.path.dirname(sys.executable)
SHARDS = (1, 2, 3)


def _three_runs(tmp_path, server: LocalServer, per_shard: int, budget: int):
    """Three `dagster asset materialize` runs of shards 1-3 at once on one instance, each with
    ``per_shard`` images of ``server``; returns the instance's folder and the runs' outputs."""
    source = tmp_path / "source"
    source.mkdir()
    for n, shard in enumerate(SHARDS):
        urls = [server.url(f"/{n * per_shard + i}.jpg") for i in range(per_shard)]
        write_image_shard(source, shard, urls)
    home = write_home(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(home)):
        pass  # its storage made once, before three processes would race to make it
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MMC4_DATA_DIR": str(tmp_path / "data"),
        "MMC4_DOCS_URL": str(source),
        "MMC4_ALLOW_PRIVATE_NETWORKS": "1",
        # What a sensor- or schedule-launched run reads too.
        "MMC4_SITE_BUDGETS": f"127.0.0.1={budget}",
        "VIRTUAL_ENV": sys.prefix,
    }
    select = "raw_docs,downloaded_images,status_report"
    try:
        commands = [
            subprocess.Popen(
                [f"{BIN}/dagster", "asset", "materialize", "-m", "mmc4_assets"]
                + ["--select", select, "--partition", str(shard)],
                cwd=PROJECT_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for shard in SHARDS
        ]
        outputs = [command.communicate(timeout=240)[0] for command in commands]
    finally:
        server.close()
    assert [command.returncode for command in commands] == [0, 0, 0], outputs
    return home, outputs


@pytest.mark.system(order=8)
def test_cli_runs_at_once_keep_a_sites_budget(tmp_path):
    body = image_bytes(300, 200)
    server = LocalServer(image_routes(36, body), latency=0.2)
    home, _ = _three_runs(tmp_path, server, per_shard=12, budget=2)
    assert server.fetches() == 36
    assert server.max_active <= 2  # three runs, one site, one budget
    assert (home / "mmc4" / "site_ledger.sqlite").is_file()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        metadata = [latest_metadata(instance, "downloaded_images", str(s)) for s in SHARDS]
    assert all(m["ok"] == 12 and m["most_requests_per_site"] <= 2 for m in metadata)
    assert all(m["ledger_transactions"] > 0 for m in metadata)
    # robots.txt was asked for once per run at most, or read from the ledger's cache.
    assert sum(m["robots_txt_fetched"] for m in metadata) == server.count("/robots.txt") >= 1
    assert all(m["robots_txt_fetched"] + m["robots_txt_from_cache"] == 1 for m in metadata)


@pytest.mark.system(order=5)
def test_a_run_that_waits_for_a_busy_site_gets_its_share_at_once(tmp_path):
    # One busy site, three runs started together: whichever holds the whole budget first must
    # come down to a fair share as its requests end, so the others are served alongside it,
    # not after it (or never: a run idle for total_deadline gives its images up).
    per_shard, budget = 150, 6
    body = image_bytes(300, 200)
    server = LocalServer(image_routes(3 * per_shard, body), latency=0.25)
    home, outputs = _three_runs(tmp_path, server, per_shard, budget)
    assert server.max_active <= budget
    with dg.DagsterInstance.from_config(str(home)) as instance:
        metadata = [latest_metadata(instance, "downloaded_images", str(s)) for s in SHARDS]
    assert [m["ok"] for m in metadata] == [per_shard] * 3, outputs
    starts = [
        sorted(
            t for i in range(n * per_shard, (n + 1) * per_shard) for t in server.times(f"/{i}.jpg")
        )
        for n in range(len(SHARDS))
    ]
    # When the first run to finish sent its last request, the others had had their share of
    # the site (fair: nearly as many; starved: none, or only its tail's leftovers).
    first_done = min(times[-1] for times in starts)
    progress = [sum(t <= first_done for t in times) / per_shard for times in starts]
    assert min(progress) >= 0.3, progress
