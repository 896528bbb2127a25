"""Shared fixtures: a real Dagster instance, a loopback image host, and a sample shard source."""

from __future__ import annotations

import functools
import gc
import math
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

# Slow tests carry the `system` marker (pyproject.toml): daemons, webservers, CLI runs, kill -9,
# runs at once, PostgreSQL or SeaweedFS (tens of seconds each, mostly waiting). They start first,
# each on the next free xdist worker (`--maxschedchunk 1` in pyproject.toml hands tests out one
# by one), and the many short tests fill the gaps, instead of one worker ending the session alone
# on a long test. `system(order=n)` marks the costliest, measured: they start before the others,
# lowest n first.
SERVER_FIXTURES = ("postgres_server", "seaweed")


def system_order(item: pytest.Item) -> float:
    return item.get_closest_marker("system").kwargs.get("order", math.inf)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The `system` tests first, by `order` (those without one as collected), each followed by
    one short test (xdist gives a worker two tests at the start: never two slow ones); the rest
    as collected. The same order on every worker, as xdist requires. A test that starts a
    PostgreSQL or SeaweedFS server must be a `system` test: `make test-fast` runs without them."""
    unmarked = [
        item.nodeid
        for item in items
        if not item.get_closest_marker("system")
        and any(name in getattr(item, "fixturenames", ()) for name in SERVER_FIXTURES)
    ]
    if unmarked:
        raise pytest.UsageError(f"tests that start a server, not marked `system`: {unmarked}")
    slow = sorted((i for i in items if i.get_closest_marker("system")), key=system_order)
    rest = [item for item in items if not item.get_closest_marker("system")]
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
