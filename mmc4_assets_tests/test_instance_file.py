"""dagster.yaml at the project root is the instance of every command a user types from the root.

Each command runs as a subprocess from the root of a copy of the project (instance_files), with
DAGSTER_HOME the root as the Makefile and the README set it. Its runs must land in the root's
history (.dagster/), which the UI shows; the instance must have the root file's settings; nothing
may say the file is unused; and what the commands leave at the root is git-ignored and kept out of
the Docker build context.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from mmc4_assets_tests.support.instance_files import (
    PROJECT_ROOT,
    ROOT_FILES,
    instance_settings,
    project_root_copy,
)
from mmc4_assets_tests.test_cli import run_from
from mmc4_assets_tests.test_webserver import running_stack, ui_commands, wait_for_server

pytestmark = pytest.mark.system

# corpus_summary: totals from metadata, so a run reads no shard and needs no server.
LAUNCHES = {
    "dg launch": ["dg", "launch", "--assets", "corpus_summary"],
    "dagster asset materialize": [
        *("dagster", "asset", "materialize", "-m", "mmc4_assets", "--select", "corpus_summary"),
    ],
}
# What Dagster prints when it leaves an instance file unused or falls back to a throwaway instance.
ABOUT_THE_INSTANCE = re.compile(r"dagster\.ya?ml|DAGSTER_HOME|temporary directory", re.IGNORECASE)
RUN_ID = re.compile(r"__ASSET_JOB - ([0-9a-f-]{36}) - ")
SETTINGS = ("concurrency", "run_monitoring", "run_retries", "python_logs", "telemetry")

# The instance a Dagster process started from the root with DAGSTER_HOME the root loads.
SHOW_INSTANCE = f"""
import json, dagster as dg
with dg.DagsterInstance.get() as instance:
    print(json.dumps({{
        "runs": {{run.run_id: run.status.value for run in instance.get_runs()}},
        "run_coordinator": type(instance.run_coordinator).__name__,
        "tag_concurrency_limits":
            instance.get_concurrency_config().run_queue_config.tag_concurrency_limits,
        "settings": {{key: instance.get_settings(key) for key in {SETTINGS!r}}},
    }}))
"""

INSTANCE_QUERY = """{
  instance { runQueueConfig { maxConcurrentRuns tagConcurrencyLimitsYaml } }
  runsOrError { ... on Runs { results { runId status } } }
}"""


def user_env(tmp_path: Path, dagster_home: Path | None) -> dict[str, str]:
    """A user's shell: DAGSTER_HOME as given (or not set), Dagster's per-user files (~/.dagster)
    under tmp_path, and the variables the definitions read."""
    env = {key: value for key, value in os.environ.items() if key != "DAGSTER_HOME"}
    env |= {
        "HOME": str(tmp_path / "user"),
        "MMC4_DATA_DIR": str(tmp_path / "data"),
        "MMC4_DOCS_URL": str(tmp_path / "no_docs"),
    }
    if dagster_home:
        env["DAGSTER_HOME"] = str(dagster_home)
    return env


def launch(root: Path, command: str, env: dict[str, str]) -> str:
    """Run a launch command from `root`; the id of its run, once it said nothing about the
    instance file."""
    result = run_from(root, LAUNCHES[command], env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert not ABOUT_THE_INSTANCE.search(output), output[-3000:]
    (run_id,) = set(RUN_ID.findall(output))
    return run_id


def root_instance(root: Path, tmp_path: Path) -> dict:
    result = run_from(root, ["python", "-c", SHOW_INSTANCE], user_env(tmp_path, root))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def assert_configured_by_the_root_file(instance: dict) -> None:
    settings = instance_settings()
    assert instance["settings"] == {key: settings[key] for key in SETTINGS}
    assert instance["run_coordinator"] == "QueuedRunCoordinator"
    limits = instance["tag_concurrency_limits"]
    assert limits == settings["concurrency"]["runs"]["tag_concurrency_limits"]
    assert any(limit["key"] == "mmc4/stage" for limit in limits)


def assert_left_only_ignored_files(root: Path) -> None:
    """What the commands left at the root (the history, Dagster's own folders) is git-ignored and
    out of the Docker build context."""
    left = {f"{p.name}/" if p.is_dir() else p.name for p in root.iterdir()}
    left -= {f"{name}/" if (root / name).is_dir() else name for name in ROOT_FILES}
    assert ".dagster/" in left  # the history
    check = ["git", "-C", str(PROJECT_ROOT), "check-ignore", "--no-index", "--", *sorted(left)]
    ignored = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert set(ignored.stdout.split()) == left, ignored.stderr
    docker = [
        line.strip()
        for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for name in left:
        assert any(fnmatch.fnmatch(name.rstrip("/"), pattern) for pattern in docker), name


@pytest.mark.parametrize("command", list(LAUNCHES))
def test_a_cli_run_from_the_root_lands_in_the_root_instance(tmp_path, command):
    root = project_root_copy(tmp_path / "project")
    run_id = launch(root, command, user_env(tmp_path, root))
    instance = root_instance(root, tmp_path)
    assert instance["runs"] == {run_id: "SUCCESS"}
    assert_configured_by_the_root_file(instance)
    assert_left_only_ignored_files(root)


def test_without_dagster_home_a_run_from_the_root_still_lands_in_the_root_instance(tmp_path):
    """DAGSTER_HOME unset: Dagster reads ./dagster.yaml into a throwaway home, and the file's own
    history paths keep the run where the UI shows it."""
    root = project_root_copy(tmp_path / "project")
    run_id = launch(root, "dagster asset materialize", user_env(tmp_path, None))
    assert root_instance(root, tmp_path)["runs"] == {run_id: "SUCCESS"}
    assert not list(root.glob(".tmp_dagster_home_*"))  # the throwaway home is gone
    assert_left_only_ignored_files(root)


@pytest.mark.parametrize("command", ["dg dev", "dagster dev"])
def test_the_ui_started_from_the_root_shows_the_cli_runs(tmp_path, command):
    root = project_root_copy(tmp_path / "project")
    env = user_env(tmp_path, root)
    run_id = launch(root, "dg launch", env)
    home_env = {"DAGSTER_HOME": env["DAGSTER_HOME"], "HOME": env["HOME"]}
    with running_stack(home_env, tmp_path, env["MMC4_DOCS_URL"], root) as stack:
        for name, args in ui_commands(command, stack.port).items():
            stack.start(name, args)
        wait_for_server(stack)
        shown = stack.graphql(INSTANCE_QUERY)
    runs = {run["runId"]: run["status"] for run in shown["runsOrError"]["results"]}
    assert runs == {run_id: "SUCCESS"}
    queue = instance_settings()["concurrency"]["runs"]
    assert shown["instance"]["runQueueConfig"]["maxConcurrentRuns"] == queue["max_concurrent_runs"]
    limits = yaml.safe_load(shown["instance"]["runQueueConfig"]["tagConcurrencyLimitsYaml"])
    assert limits == queue["tag_concurrency_limits"]
    output = stack.logs[command].read_text(errors="replace")
    assert not ABOUT_THE_INSTANCE.search(output), output[-3000:]
    assert_left_only_ignored_files(root)


def test_make_targets_use_the_root_instance_whatever_the_shell_says(tmp_path):
    """A DAGSTER_HOME of the user's shell would leave the root's dagster.yaml unused (and make
    `dg dev` warn): `make demo`, `make ui` and `make test` run with DAGSTER_HOME the root."""
    show_home = ["make", "-s", "--eval", "show-home: ; @echo $$DAGSTER_HOME", "show-home"]
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    result = subprocess.run(show_home, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(PROJECT_ROOT)
