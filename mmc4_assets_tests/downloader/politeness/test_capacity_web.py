"""Learned per-site limits against loopback sites that have a capacity (mmc4_devtools.capacity_web).

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
from mmc4_devtools.capacity_web import CapacityServer

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]

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
    table, stats = run(server, 100, tmp_path)
    assert (table.outcome == "ok").all()
    served = server.served_seconds()
    # Within 1.5x its unloaded latency on average, and (almost) nothing shed.
    assert sum(served) / len(served) <= 1.5 * 0.3, sum(served) / len(served)
    assert server.shed() <= 0.02 * len(server.answers)
    assert server.mean_in_flight() <= 3.5
    (row,) = stats["site_limits"]
    assert row["site"] == "127.0.0.1" and row["limit_at_end"] <= 4
    # Near its 300 ms (the bug this guards read 559). Times are the client's own, so on a busy
    # machine (the suite beside it) they carry the event loop's delay: one suite run read 402.
    assert 250 <= row["unloaded_ms"] <= 450


def test_a_mid_sized_server_converges_near_its_capacity(site, tmp_path):
    server = site(8, 0.2)
    started = time.monotonic()
    table, stats = run(server, 600, tmp_path)
    assert (table.outcome == "ok").all()
    settled = server.mean_in_flight(since=started + 6)
    assert 6 <= settled <= 12, settled
    assert server.shed() <= 0.02 * len(server.answers)


def test_a_big_site_is_used_at_least_at_half_its_capacity_and_never_past_the_ceiling(
    site, tmp_path
):
    server = site(48, 0.4)
    started = time.monotonic()
    table, stats = run(server, 2000, tmp_path)
    assert (table.outcome == "ok").all()
    assert server.mean_in_flight(since=started + 6) >= 24
    assert server.max_in_flight <= 64  # the default ceiling
    assert stats["site_limits"][0]["limit_reached"] >= 48


def test_a_site_that_never_slows_grows_to_the_ceiling_and_no_further(site, tmp_path):
    server = site(1000, 0.1)
    table, stats = run(server, 500, tmp_path, max_per_site=16)
    assert (table.outcome == "ok").all()
    assert server.max_in_flight == 16
    assert stats["site_limits"][0]["limit_reached"] == 16


def test_a_site_answering_fast_errors_does_not_grow(site, tmp_path):
    server = site(1000, 0.01, status=500)
    table, _ = run(server, 200, tmp_path, max_attempts=1)
    assert set(table.outcome) == {"http_error"}
    assert server.max_in_flight <= SETTINGS.per_site


def test_a_site_whose_capacity_drops_is_backed_off_within_seconds(site, tmp_path):
    server = site(32, 0.2)
    dropped = {}

    def drop() -> None:
        time.sleep(7)
        dropped["at"] = time.monotonic()
        server.set_capacity(8)

    threading.Thread(target=drop, daemon=True).start()
    table, _ = run(server, 1000, tmp_path)
    assert (table.outcome == "ok").all()
    at = dropped["at"]
    assert server.mean_in_flight(since=at - 3, until=at) >= 16  # it had grown
    # A few seconds after the drop, we send about what it serves (and it sheds little).
    after = server.mean_in_flight(since=at + 4)
    assert after <= 14, after


def test_three_runs_at_once_share_one_learned_limit(site, tmp_path):
    # Three runs (processes) on one ledger file, one site of capacity 8: the limit is the
    # deployment's, so together they send about what it serves, and every image is fetched.
    from mmc4_assets_tests.downloader.politeness.test_politeness import Runs

    server = site(8, 0.2)
    group = Runs(tmp_path)
    settings = {
        "adaptive": True,
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        "respect_robots_txt": False,
        "total_deadline": 60.0,
    }
    try:
        started = [
            group.start(
                f"run{n}",
                [server.url(f"/{n * 250 + i}.jpg") for i in range(250)],
                settings,
                shard=n,
            )
            for n in range(3)
        ]
        results = [group.result(f"run{n}", process) for n, process in enumerate(started)]
    finally:
        group.close()
    outcomes = [outcome for r in results for outcome in r["outcomes"]]
    assert outcomes.count("ok") >= 0.97 * len(outcomes)
    assert server.shed() <= 0.02 * len(server.answers)
    assert 5 <= server.mean_in_flight() <= 13, server.mean_in_flight()
