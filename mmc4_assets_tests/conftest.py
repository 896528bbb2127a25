"""Shared fixtures: a real Dagster instance, a loopback image host, and a sample shard source."""

from __future__ import annotations

import functools
import gc
import secrets
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest

from mmc4_assets_tests.support.servers.postgres import PostgresHome, PostgresServer
from mmc4_assets_tests.support.shards import SHARD, zip_shard
from mmc4_devtools.loopback_web import LoopbackWeb
from mmc4_devtools.sample_shard import write_sample_shard

# Tests that start daemons, webservers or CLI runs (tens of seconds each, mostly waiting), the
# costliest first. They start first, each on the next free xdist worker (`--maxschedchunk 1` in
# pyproject.toml hands tests out one by one), and the many short tests fill the gaps, instead of
# one worker ending the session alone on a long test. A test missing here only loses its head
# start.
SLOW_TESTS = (
    "test_a_backfill_survives_losing_its_host_mid_download",
    "test_ui_backfills_run_in_parallel_within_the_queue_limits",
    "test_a_download_killed_twice_then_started_twice_at_once",
    "test_materialize_a_shard_from_the_ui",  # two stacks: `dg dev`, webserver + daemon
    "test_a_run_declared_dead_while_working_stops_writing",
    "test_materialize_docs_from_the_cli",  # three commands
    "test_cli_runs_at_once_keep_a_sites_budget",  # three CLI runs at once
    "test_a_docs_run_killed_mid_fetch_does_not_wedge_the_rerun",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """SLOW_TESTS first, in that order, each followed by one short test (xdist gives a worker two
    tests at the start: never two slow ones); the rest as collected. The same order on every
    worker, as xdist requires."""

    def name(item: pytest.Item) -> str:
        return item.originalname if isinstance(item, pytest.Function) else item.name

    slow = sorted(
        (i for i in items if name(i) in SLOW_TESTS), key=lambda i: SLOW_TESTS.index(name(i))
    )
    rest = [item for item in items if name(item) not in SLOW_TESTS]
    ordered = []
    for item in slow:
        ordered.append(item)
        if rest:
            ordered.append(rest.pop(0))
    items[:] = ordered + rest


# Test packages of the Dagster-free layers (the corpus logic, the downloader, dev tools, training
# packing): nothing in them, their subfolders included, opens a Dagster context.
DAGSTER_FREE_PACKAGES = {"corpus", "downloader", "devtools", "training"}
TESTS = Path(__file__).parent


def in_dagster_free_package(path: Path) -> bool:
    return any(TESTS / package in path.parents for package in DAGSTER_FREE_PACKAGES)


@pytest.fixture(autouse=True)
def collect_garbage_after_each_test(request):
    """Collect garbage after every test that may use Dagster, so a Dagster context left open fails
    its own test's neighbours at once instead of some later test, whenever the collector happens
    to run. (A collection costs about 0.1 s; the Dagster-free packages' tests skip it.)"""
    yield
    if not in_dagster_free_package(request.node.path):
        gc.collect()


@pytest.fixture
def instance():
    """A real SQLite-backed instance in a temporary DAGSTER_HOME."""
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole session; each test gets databases of its own."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_home(postgres_server, tmp_path) -> PostgresHome:
    """A DAGSTER_HOME with the shipped deploy/postgres/dagster.yaml, on a fresh database. Its
    `env` is what a process of the deployment needs: DAGSTER_HOME and the DAGSTER_PG_* variables."""
    return postgres_server.write_home(tmp_path / "dagster_home", f"dagster_{secrets.token_hex(6)}")


@pytest.fixture
def postgres_instance(postgres_home, monkeypatch) -> Iterator[dg.DagsterInstance]:
    """The Postgres-backed instance, loaded the way every Dagster process loads it: from
    $DAGSTER_HOME/dagster.yaml with the variables set."""
    for key, value in postgres_home.env.items():
        monkeypatch.setenv(key, value)
    with dg.DagsterInstance.get() as postgres:
        yield postgres


@pytest.fixture
def image_web():
    with LoopbackWeb(hosts=2, latency_ms=2.0, stall_seconds=5.0) as web:
        yield web


@pytest.fixture
def shard_folder(tmp_path, image_web) -> Path:
    """A folder holding shard 42 as the corpus ships it (zipped), its images on the loopback web."""
    folder = tmp_path / "source"
    folder.mkdir()
    write_sample_shard(
        folder / f"docs_no_face_shard_{SHARD}_v2.jsonl",
        documents=40,
        seed=7,
        image_base_url=image_web.base_urls[0],
    )
    zip_shard(folder / f"docs_no_face_shard_{SHARD}_v2.jsonl")
    return folder


@pytest.fixture
def docs_server(shard_folder) -> Iterator[str]:
    """The shard folder over HTTP on 127.0.0.1 (a base URL; files keep their names)."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(shard_folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def pipeline_env(monkeypatch, tmp_path, shard_folder) -> Path:
    """The variables a user sets: data folder, shard source, loopback allowed. Gives data dir."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("MMC4_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MMC4_DOCS_URL", str(shard_folder))
    monkeypatch.setenv("MMC4_ALLOW_PRIVATE_NETWORKS", "1")
    return data_dir
