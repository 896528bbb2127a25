"""The commands a user types, run as subprocesses against a real instance and loopback servers.

Each command is tested in the exact words the README and docs/contracts.md give, from the project
root.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import orjson
import pytest

from mmc4_assets_tests.support.instance_files import PROJECT_ROOT, write_home

pytestmark = pytest.mark.system

BIN = Path(sys.executable).parent
ASSET_KEYS = {
    *("raw_docs", "reassigned_docs", "downloaded_images", "status_report", "corpus_summary"),
    *("training_shards", "placeholder_index"),
}

MATERIALIZE_DOCS = {
    "dg launch": ["dg", "launch", "--assets", "raw_docs,reassigned_docs", "--partition", "42"],
    "dagster -m mmc4_assets": [
        *("dagster", "asset", "materialize", "-m", "mmc4_assets"),
        *("--select", "raw_docs,reassigned_docs", "--partition", "42"),
    ],
    "dagster -m mmc4_assets.definitions": [
        *("dagster", "asset", "materialize", "-m", "mmc4_assets.definitions"),
        *("--select", "raw_docs,reassigned_docs", "--partition", "42"),
    ],
}


def run_from(root: Path, args: list[str], env: dict) -> subprocess.CompletedProcess:
    """Run a command of the project's venv from `root` in `env` (the whole environment), as a user
    with the venv activated."""
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        cwd=root,
        env={**env, "VIRTUAL_ENV": sys.prefix},
        capture_output=True,
        text=True,
        timeout=240,
    )


def run_cli(args: list[str], env: dict, home: Path) -> subprocess.CompletedProcess:
    """Run a command from the project root, on an instance in `home` with the project's settings."""
    write_home(home)
    return run_from(PROJECT_ROOT, args, {**os.environ, **env, "DAGSTER_HOME": str(home)})


@pytest.mark.parametrize("command", list(MATERIALIZE_DOCS), ids=list(MATERIALIZE_DOCS))
@pytest.mark.system(order=6)
def test_materialize_docs_from_the_cli(tmp_path, docs_server, command):
    data_dir = tmp_path / "data"
    env = {
        "MMC4_DATA_DIR": str(data_dir),
        "MMC4_DOCS_URL": docs_server + "/docs_no_face_shard_{shard}_v2.jsonl.zip",
    }
    home = tmp_path / "home"
    result = run_cli(MATERIALIZE_DOCS[command], env, home)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    raw = (data_dir / "raw_docs" / "42.jsonl").read_bytes().splitlines()
    reassigned = (data_dir / "reassigned_docs" / "42.jsonl").read_bytes().splitlines()
    assert len(raw) == len(reassigned) == 40
    assert [orjson.loads(line)["url"] for line in raw] == [
        orjson.loads(line)["url"] for line in reassigned
    ]
    # The run is in the persistent instance, where the UI shows it.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["dagster/partition"] == "42"

    # Readable output: the pipeline's own progress, not engine events or warnings we can fix.
    assert "shard 42: 40 documents" in output
    assert " - DEBUG - " not in output
    assert "BetaWarning" not in output and "DeprecationWarning" not in output
    if command == "dg launch":  # the command Dagster recommends warns about nothing
        assert "Warning" not in output, output[-3000:]


def test_cli_refuses_a_shard_that_does_not_exist(tmp_path, docs_server):
    env = {"MMC4_DATA_DIR": str(tmp_path / "data"), "MMC4_DOCS_URL": docs_server + "/{shard}.jsonl"}
    result = run_cli(
        ["dg", "launch", "--assets", "raw_docs", "--partition", "3218"], env, tmp_path / "home"
    )
    assert result.returncode != 0
    assert "shard 3218 does not exist" in result.stderr
    assert not (tmp_path / "data").exists()


def test_dg_checks_the_definitions(tmp_path):
    result = run_cli(["dg", "check", "defs"], {}, tmp_path / "home")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "All definitions loaded successfully" in result.stdout + result.stderr
    assert "does not match the virtual environment" not in result.stderr


def test_dg_lists_the_definitions(tmp_path):
    result = run_cli(["dg", "list", "defs", "--json"], {}, tmp_path / "home")
    assert result.returncode == 0, result.stderr[-3000:]
    listed = orjson.loads(result.stdout)
    assert ASSET_KEYS <= {asset["asset_key"] for asset in listed["assets"]}
    assert {sensor["name"] for sensor in listed["sensors"]} == {
        "stale_images_sensor",
        "dead_runs_sensor",
    }
    assert {schedule["name"] for schedule in listed["schedules"]} == {"new_shards_schedule"}
    checks = {check["name"] for check in listed["asset_checks"]}
    assert {
        "assignments_are_valid",
        "every_image_has_one_status",
        "training_shards_match_their_counts",
    } <= checks
