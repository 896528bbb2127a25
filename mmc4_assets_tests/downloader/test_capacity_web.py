"""Learned per-site limits against loopback sites that have a capacity (capacity_server.py).

Each test is one shard run (or three at once) at the product's defaults but for timeouts: the
site's own answers must bring the limit near what it can serve, in both directions.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mmc4_assets.downloader import DownloadSettings, download_shard
from mmc4_assets.downloader.refs import ImageRef
from mmc4_assets_tests.downloader.capacity_server import CapacityServer

pytestmark = pytest.mark.timeout(240)

SETTINGS = DownloadSettings(
    allow_private_networks=True,
    respect_robots_txt=False,
    connect_timeout=2.0,
    read_timeout=10.0,
    total_deadline=60.0,
    backoff_base=0.3,
    fetch_processes=1,
)


def refs_of(server: CapacityServer, count: int) -> list[ImageRef]:
    return [ImageRef(i, 0, f"{i}.jpg", server.url(f"/{i}.jpg")) for i in range(count)]


def run(server: CapacityServer, count: int, tmp_path: Path, **settings):
    stats: dict = {}
    settings = DownloadSettings(**{**vars(SETTINGS), **settings})
    table = download_shard(
        refs_of(server, count), data_dir=tmp_path, shard=0, settings=settings, stats=stats
    )
    return table, stats


@pytest.fixture
def site():
    servers = []

    def make(capacity: int, base: float, **kw) -> CapacityServer:
        servers.append(CapacityServer(capacity, base, **kw))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_a_small_server_gets_about_what_it_can_serve(site, tmp_path):
    server = site(2, 0.3)
    table, stats = run(server, 150, tmp_path)
    assert (table.outcome == "ok").all()
    served = server.served_seconds()
    # Within 1.5x its unloaded latency on average, and (almost) nothing shed.
    assert sum(served) / len(served) <= 1.5 * 0.3, sum(served) / len(served)
    assert server.shed() <= 0.02 * len(server.answers)
    assert server.mean_in_flight() <= 3.5
    (row,) = stats["site_limits"]
    assert row["site"] == "127.0.0.1" and row["limit_at_end"] <= 4
    assert 250 <= row["unloaded_ms"] <= 400


def test_a_mid_sized_server_converges_near_its_capacity(site, tmp_path):
    server = site(8, 0.3)
    started = time.monotonic()
    table, stats = run(server, 700, tmp_path)
    assert (table.outcome == "ok").all()
    settled = server.mean_in_flight(since=started + 8)
    assert 6 <= settled <= 12, settled
    assert server.shed() <= 0.02 * len(server.answers)


def test_a_big_site_is_used_at_least_at_half_its_capacity_and_never_past_the_ceiling(
    site, tmp_path
):
    server = site(48, 0.5)
    started = time.monotonic()
    table, stats = run(server, 2500, tmp_path)
    assert (table.outcome == "ok").all()
    assert server.mean_in_flight(since=started + 6) >= 24
    assert server.max_in_flight <= 64  # the default ceiling
    assert stats["site_limits"][0]["limit_reached"] >= 48


def test_a_site_that_never_slows_grows_to_the_ceiling_and_no_further(site, tmp_path):
    server = site(1000, 0.2)
    table, stats = run(server, 600, tmp_path, max_per_site=16)
    assert (table.outcome == "ok").all()
    assert server.max_in_flight == 16
    assert stats["site_limits"][0]["limit_reached"] == 16


def test_a_site_answering_fast_errors_does_not_grow(site, tmp_path):
    server = site(1000, 0.01, status=500)
    table, _ = run(server, 300, tmp_path)
    assert set(table.outcome) == {"http_error"}
    assert server.max_in_flight <= SETTINGS.per_site


def test_a_site_whose_capacity_drops_is_backed_off_within_seconds(site, tmp_path):
    server = site(32, 0.3)
    dropped = {}

    def drop() -> None:
        time.sleep(8)
        dropped["at"] = time.monotonic()
        server.set_capacity(4)

    threading.Thread(target=drop, daemon=True).start()
    table, _ = run(server, 1400, tmp_path)
    assert (table.outcome == "ok").all()
    at = dropped["at"]
    assert server.mean_in_flight(since=at - 4, until=at) >= 16  # it had grown
    # A few seconds after the drop, we send about what it serves (and it sheds little).
    assert server.mean_in_flight(since=at + 5) <= 8, server.mean_in_flight(since=at + 5)
