"""The commands a user types, run as subprocesses against a real instance and loopback servers."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

DAGSTER = str(Path(sys.executable).with_name("dagster"))
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def docs_server(shard_folder):
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(shard_folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def run_cli(args: list[str], env: dict, home: Path) -> subprocess.CompletedProcess:
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text((PROJECT_ROOT / "dagster_home" / "dagster.yaml").read_text())
    return subprocess.run(
        [DAGSTER, *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env, "DAGSTER_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_materialize_docs_from_the_cli(tmp_path, docs_server):
    data_dir = tmp_path / "data"
    env = {
        "MMC4_DATA_DIR": str(data_dir),
        "MMC4_DOCS_URL": docs_server + "/docs_no_face_shard_{shard}_v2.jsonl.zip",
    }
    args = ["asset", "materialize", "-m", "mmc4_assets.definitions"]
    result = run_cli(
        [*args, "--select", "raw_docs,reassigned_docs", "--partition", "42"], env, tmp_path / "home"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RUN_SUCCESS" in result.stderr + result.stdout
    raw = (data_dir / "raw_docs" / "42.jsonl").read_bytes().splitlines()
    reassigned = (data_dir / "reassigned_docs" / "42.jsonl").read_bytes().splitlines()
    assert len(raw) == len(reassigned) == 40
    assert [orjson.loads(line)["url"] for line in raw] == [
        orjson.loads(line)["url"] for line in reassigned
    ]
    # the run is in the persistent instance, where the UI would show it
    assert list((tmp_path / "home" / "history").glob("runs*")), "no run storage in DAGSTER_HOME"


def test_cli_refuses_a_shard_that_does_not_exist(tmp_path, docs_server):
    env = {"MMC4_DATA_DIR": str(tmp_path / "data"), "MMC4_DOCS_URL": docs_server + "/{shard}.jsonl"}
    args = ["asset", "materialize", "-m", "mmc4_assets.definitions", "--select", "raw_docs"]
    result = run_cli([*args, "--partition", "3218"], env, tmp_path / "home")
    assert result.returncode != 0
    assert "shard 3218 does not exist" in result.stderr
    assert not (tmp_path / "data").exists()
