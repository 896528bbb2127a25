"""End to end through the UI's API: dagster-webserver + dagster-daemon as subprocesses.

What a user does in the browser, done over GraphQL: see the assets and their 23,085 shard
partitions, click "Materialize" for shard 42 (the UI launches the implicit asset job with an asset
selection and a partition tag), and watch the queued run go through the daemon to success.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
import requests

from mmc4_assets.corpus.shards import ALL_SHARDS
from mmc4_assets_tests.support.instance_files import PROJECT_ROOT, project_root_copy
from mmc4_assets_tests.support.servers.process import free_port

pytestmark = pytest.mark.system

BIN = Path(sys.executable).parent
SHARD = "42"
ASSETS = ["raw_docs", "reassigned_docs", "downloaded_images", "status_report"]
IMPLICIT_ASSET_JOB = "__ASSET_JOB"
SERVER_TIMEOUT = 120.0  # a cold start imports dagster three times over on a busy 2-core box
RUN_TIMEOUT = 300.0
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}

ASSET_NODES_QUERY = """
query AssetNodes {
  assetNodes {
    assetKey { path }
    jobNames
    partitionDefinition { type }
    partitionKeysByDimension { name partitionKeys }
    repository { name location { name } }
  }
}
"""

LAUNCH_RUN_MUTATION = """
mutation LaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message stack }
    ... on Error { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""

RUN_QUERY = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId status tags { key value } assetSelection { path } }
    ... on PythonError { message }
    ... on RunNotFoundError { message }
  }
}
"""

RUN_FAILURE_EVENTS_QUERY = """
query RunLogs($runId: ID!) {
  logsForRun(runId: $runId) {
    __typename
    ... on EventConnection {
      events {
        __typename
        ... on MessageEvent { message level stepKey }
        ... on ErrorEvent { error { message stack } }
      }
    }
  }
}
"""


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as error:
        return f"<cannot read {path}: {error}>"


def _signal_and_wait(process: subprocess.Popen, signum: int, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)


def _stop(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process group (the code servers and runs it spawned too), then SIGKILL it."""
    if process.poll() is None:
        _signal_and_wait(process, signal.SIGTERM, grace)
    # Kill whatever is left of the group even when the leader already exited (orphaned children).
    _signal_and_wait(process, signal.SIGKILL, grace)


@dataclass
class Stack:
    """Processes serving one instance (webserver, daemon, `dg dev`), started by `start`."""

    port: int
    data_dir: Path
    env: dict[str, str]
    log_dir: Path
    root: Path = PROJECT_ROOT  # where its processes start: the project's root, or a copy of it
    logs: dict[str, Path] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    _handles: list = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, name: str, command: list[str]) -> None:
        """Start one process from the stack's root, in its own process group (so that teardown
        reaches the code servers and runs it spawns), its output in a log of its own."""
        self.logs[name] = self.log_dir / f"{name.replace(' ', '_')}.log"
        handle = open(self.logs[name], "wb")  # noqa: SIM115 - closed in stop()
        self._handles.append(handle)
        self.processes[name] = subprocess.Popen(
            command,
            cwd=self.root,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        for process in self.processes.values():
            _stop(process)
        for handle in self._handles:
            handle.close()

    def diagnostics(self) -> str:
        parts = []
        for name, process in self.processes.items():
            state = "running" if process.poll() is None else f"exited {process.returncode}"
            parts.append(f"----- {name} ({state}), tail of {self.logs[name]}:\n")
            parts.append(_tail(self.logs[name]))
        return "\n".join(parts)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(
                    f"{name} exited with {process.returncode}\n{self.diagnostics()}"
                )

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 60.0) -> dict:
        response = requests.post(
            f"{self.url}/graphql",
            json={"query": query, "variables": variables or {}},
            timeout=timeout,
        )
        assert response.status_code == 200, (
            f"GraphQL HTTP {response.status_code}: {response.text[:2000]}\n{self.diagnostics()}"
        )
        body = response.json()
        assert not body.get("errors"), f"GraphQL errors: {body['errors']}\n{self.diagnostics()}"
        return body["data"]


def ui_commands(kind: str, port: int) -> dict[str, list[str]]:
    """What serves the UI: `dg dev` (what `make ui` runs), the classic `dagster dev`, or the
    webserver and daemon of a deployment, both from workspace.yaml."""
    if kind == "dg dev":
        return {"dg dev": [str(BIN / "dg"), "dev", "--host", "127.0.0.1", "--port", str(port)]}
    if kind == "dagster dev":
        return {"dagster dev": [str(BIN / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(port)]}
    return {
        "webserver": [
            str(BIN / "dagster-webserver"),
            *("-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)),
        ],
        "daemon": [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
    }


@contextlib.contextmanager
def running_stack(
    home_env: dict[str, str], tmp_path: Path, docs_url: str, root: Path = PROJECT_ROOT
) -> Iterator[Stack]:
    """A stack's environment (the instance given by `home_env`, data under tmp_path, shards from
    `docs_url`), port and root; whatever is started on it is always torn down."""
    env = {
        **os.environ,
        **home_env,
        "MMC4_DATA_DIR": str(tmp_path / "data"),
        "MMC4_DOCS_URL": docs_url + "/docs_no_face_shard_{shard}_v2.jsonl.zip",
        "MMC4_ALLOW_PRIVATE_NETWORKS": "1",
        "PYTHONUNBUFFERED": "1",
        "VIRTUAL_ENV": sys.prefix,  # dg checks that the project's venv is the active one
    }
    stack = Stack(
        port=free_port(), data_dir=tmp_path / "data", env=env, log_dir=tmp_path, root=root
    )
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(params=["dg dev", "webserver + daemon"])
def stack(request, tmp_path, docs_server) -> Iterator[Stack]:
    """The UI and the daemon started from the root of a copy of the project, on its instance: its
    dagster.yaml, with DAGSTER_HOME the root as the Makefile sets it."""
    root = project_root_copy(tmp_path / "project")
    with running_stack({"DAGSTER_HOME": str(root)}, tmp_path, docs_server, root) as started:
        if request.param == "webserver + daemon":
            # A deployment's first step; else the two create the new SQLite storage at once.
            migrate = [str(BIN / "dagster"), "instance", "migrate"]
            done = subprocess.run(migrate, cwd=root, env=started.env, capture_output=True)
            assert done.returncode == 0, done.stderr[-3000:]
        for name, command in ui_commands(request.param, started.port).items():
            started.start(name, command)
        yield started


def wait_for_server(stack: Stack, timeout: float = SERVER_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last_error = "never answered"
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            response = requests.get(f"{stack.url}/server_info", timeout=5)
            if response.status_code == 200:
                # The server answers before the code location has loaded: wait for that too.
                data = stack.graphql(
                    "{ workspaceOrError { __typename ... on Workspace { locationEntries {"
                    " name loadStatus locationOrLoadError { __typename"
                    " ... on PythonError { message stack } } } } } }"
                )
                entries = data["workspaceOrError"].get("locationEntries") or []
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    # Loaded can also mean "failed to load": say why, instead of an empty catalog.
                    errors = [
                        e["locationOrLoadError"]
                        for e in entries
                        if e["locationOrLoadError"]["__typename"] == "PythonError"
                    ]
                    assert not errors, f"code location failed: {errors}\n{stack.diagnostics()}"
                    return
                last_error = f"locations: {entries}"
            else:
                last_error = f"HTTP {response.status_code}"
        except requests.RequestException as error:
            last_error = repr(error)
        time.sleep(1.0)
    raise AssertionError(
        f"webserver not ready after {timeout:.0f}s ({last_error})\n{stack.diagnostics()}"
    )


def run_failure_details(stack: Stack, run_id: str) -> str:
    try:
        data = stack.graphql(RUN_FAILURE_EVENTS_QUERY, {"runId": run_id})
    except AssertionError as error:
        return f"<no run logs: {error}>"
    events = (data["logsForRun"] or {}).get("events") or []
    lines = []
    for event in events:
        if event.get("level") in {"ERROR", "CRITICAL"} or event.get("error"):
            lines.append(f"{event['__typename']} {event.get('stepKey')}: {event.get('message')}")
            if event.get("error"):
                lines.append(event["error"]["message"] + "".join(event["error"]["stack"] or []))
    return "\n".join(lines[-20:])


def wait_for_run(stack: Stack, run_id: str, timeout: float = RUN_TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    run: dict = {}
    while time.monotonic() < deadline:
        stack.check_alive()
        run = stack.graphql(RUN_QUERY, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        if run["status"] in TERMINAL:
            return run
        time.sleep(1.0)
    raise AssertionError(
        f"run {run_id} still {run.get('status')} after {timeout:.0f}s\n{stack.diagnostics()}"
    )


@pytest.mark.timeout(900)
@pytest.mark.system(order=7)
def test_materialize_a_shard_from_the_ui(stack):
    wait_for_server(stack)

    # The assets and their partitions, as the asset catalog shows them.
    nodes = {
        "/".join(node["assetKey"]["path"]): node
        for node in stack.graphql(ASSET_NODES_QUERY, timeout=120)["assetNodes"]
    }
    assert set(ASSETS) | {"corpus_summary"} <= set(nodes), sorted(nodes)
    for name in ASSETS:
        node = nodes[name]
        assert node["partitionDefinition"]["type"] == "STATIC", (name, node["partitionDefinition"])
        (dimension,) = node["partitionKeysByDimension"]
        keys = dimension["partitionKeys"]
        assert len(keys) == len(set(keys)) == 23_085 == len(ALL_SHARDS), (name, len(keys))
        assert {"0", SHARD, "23098"} <= set(keys) and "3218" not in keys
        assert IMPLICIT_ASSET_JOB in node["jobNames"], (name, node["jobNames"])
    repository = nodes["raw_docs"]["repository"]

    # The "Materialize" button for shard 42: the implicit asset job with an asset selection.
    params = {
        "selector": {
            "repositoryLocationName": repository["location"]["name"],
            "repositoryName": repository["name"],
            "jobName": IMPLICIT_ASSET_JOB,
            "assetSelection": [{"path": [name]} for name in ASSETS],
        },
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": SHARD}]},
    }
    launched = stack.graphql(LAUNCH_RUN_MUTATION, {"executionParams": params}, timeout=120)
    result = launched["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", f"{result}\n{stack.diagnostics()}"
    run_id = result["run"]["runId"]

    # Queued until the daemon's run coordinator launches it.
    run = wait_for_run(stack, run_id)
    assert run["status"] == "SUCCESS", (
        f"run {run_id} ended {run['status']}\n{run_failure_details(stack, run_id)}\n"
        f"{stack.diagnostics()}"
    )
    assert {"key": "dagster/partition", "value": SHARD} in run["tags"]
    assert sorted("/".join(key["path"]) for key in run["assetSelection"]) == sorted(ASSETS)

    data_dir = stack.data_dir
    raw = (data_dir / "raw_docs" / f"{SHARD}.jsonl").read_bytes().splitlines()
    reassigned = (data_dir / "reassigned_docs" / f"{SHARD}.jsonl").read_bytes().splitlines()
    assert len(raw) == len(reassigned) == 40
    assert [orjson.loads(line)["url"] for line in raw] == [
        orjson.loads(line)["url"] for line in reassigned
    ]
    images = list((data_dir / "images" / SHARD).iterdir())
    assert images, "no image downloaded"
    assert (data_dir / "status" / f"{SHARD}.parquet").is_file()
    assert (data_dir / "status" / f"{SHARD}.tsv.gz").is_file()

    # The UI sees the materialization of the partition.
    status = stack.graphql(
        """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) {
             ... on AssetNode { partitionStats { numMaterialized } } } }""",
        {"key": {"path": ["status_report"]}},
    )
    assert status["assetNodeOrError"]["partitionStats"]["numMaterialized"] == 1

    # One instance, configured by one file: nothing warns about another dagster.yaml.
    for log in stack.logs.values():
        assert "will not be used" not in log.read_text(errors="replace"), stack.diagnostics()
