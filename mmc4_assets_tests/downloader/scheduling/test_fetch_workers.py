"""download_shard across fetch worker processes, against real servers on 127.0.0.x."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from mmc4_assets.corpus.status import check_status
from mmc4_assets.downloader import ProgressInfo, download_shard
from mmc4_assets.downloader.refs import ImageRef
from mmc4_assets.downloader.scheduling.fetch_workers import (
    WorkerFailed,
    split_by_site,
    worker_count,
)
from mmc4_assets_tests.downloader.scheduling.test_shard_run import BIG, SMALL
from mmc4_assets_tests.downloader.scheduling.test_shard_run import SETTINGS as SHARD_RUN_SETTINGS
from mmc4_assets_tests.downloader.scheduling.test_site_queue import job
from mmc4_assets_tests.support.local_server import refusing_url, send

SETTINGS = dataclasses.replace(SHARD_RUN_SETTINGS, fetch_processes=2)
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


def test_sites_are_split_whole_and_balanced():
    sizes = {"a": 10, "b": 6, "c": 4, "d": 1, "e": 1}
    jobs = [job(host, i) for host, n in sizes.items() for i in range(n)]
    groups = split_by_site(jobs, 2)
    sites = [{j.site for j in group} for group in groups]
    assert sites[0].isdisjoint(sites[1])
    assert sorted(len(group) for group in groups) == [11, 11]
    assert sorted(j.position for group in groups for j in group) == sorted(j.position for j in jobs)


def test_auto_uses_two_processes_per_cpu_only_for_shards_worth_it():
    auto = dataclasses.replace(SETTINGS, fetch_processes=0)
    assert worker_count(auto, 10) == 1
    assert worker_count(auto, 100_000) == 2 * (os.cpu_count() or 1)
    assert worker_count(SETTINGS, 10) == 2
    assert worker_count(dataclasses.replace(SETTINGS, fetch_processes=1), 100_000) == 1


def test_workers_give_every_image_its_outcome(server, silent_server, tmp_path: Path):
    routes = {
        "/ok.jpg": lambda h: send(h, 200, SMALL),
        "/big.jpg": lambda h: send(h, 200, BIG),
        "/html": lambda h: send(h, 200, b"<html>hello</html>", "image/jpeg"),
        "/trunc": lambda h: send(h, 200, SMALL[: len(SMALL) // 2]),
    }
    expected = {"/ok.jpg": "ok", "/big.jpg": "ok", "/html": "not_image", "/trunc": "corrupt"}
    expected["/missing"] = "http_error"
    servers = [server(routes, host=host) for host in HOSTS]
    refs = []
    for doc, s in enumerate(servers):
        for index, path in enumerate(expected):
            refs.append(ImageRef(doc, index, f"{doc}-{index}.jpg", s.url(path)))
    silent = silent_server("127.0.0.5")
    refs.append(ImageRef(9, 0, "silent.jpg", silent.url("/a.jpg")))
    refs.append(ImageRef(9, 1, "refused.jpg", refusing_url("127.0.0.6", "/a.jpg")))
    seen: list[ProgressInfo] = []
    table = download_shard(
        refs, data_dir=tmp_path, shard=3, settings=SETTINGS, progress=seen.append
    )
    outcomes = dict(zip(table["image_name"], table["outcome"], strict=True))
    for doc in range(len(HOSTS)):
        for index, outcome in enumerate(expected.values()):
            assert outcomes[f"{doc}-{index}.jpg"] == outcome
    assert outcomes["silent.jpg"] == "timeout"
    assert outcomes["refused.jpg"] == "connection_error"
    assert check_status(table, refs, tmp_path) == []
    saved = {p.name for p in (tmp_path / "images/3").iterdir()}
    assert saved == {f"{doc}-{index}.jpg" for doc in range(len(HOSTS)) for index in (0, 1)}
    assert seen[-1].done == seen[-1].total == len(refs)
    assert seen[-1].bytes >= len(HOSTS) * (len(SMALL) + len(BIG))
    # A rerun holds every valid file: nothing is fetched again.
    before = sum(s.fetches() for s in servers)
    again = download_shard(refs, data_dir=tmp_path, shard=3, settings=SETTINGS, previous=table)
    assert sum(s.fetches() for s in servers) - before == 3 * len(HOSTS)  # the three failures
    assert (again["outcome"] == "ok").sum() == (table["outcome"] == "ok").sum()


def _children() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def test_a_dead_worker_fails_the_run_and_leaves_no_process(server, tmp_path: Path):
    slow = {f"/{i}.jpg": (lambda h: send(h, 200, SMALL)) for i in range(40)}
    servers = [server(slow, host=host, latency=0.5) for host in HOSTS[:2]]
    refs = [
        ImageRef(doc, i, f"{doc}-{i}.jpg", s.url(f"/{i}.jpg"))
        for doc, s in enumerate(servers)
        for i in range(40)
    ]
    patient = dataclasses.replace(SETTINGS, per_site=1, total_deadline=60.0)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            download_shard(refs, data_dir=tmp_path, shard=1, settings=patient)
        except BaseException as error:  # noqa: BLE001 - inspected below
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    workers = []
    while len(workers) < 2 and thread.is_alive():
        workers = [p for p in _children() if "fetch_workers" in " ".join(p.cmdline())]
        time.sleep(0.05)
    workers[0].send_signal(signal.SIGKILL)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], WorkerFailed)
    assert "died" in str(errors[0])
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)


PARENT = """
import sys
from pathlib import Path
from mmc4_assets.downloader import DownloadSettings, download_shard
from mmc4_assets.downloader.refs import ImageRef
urls = sys.argv[2:]
refs = [ImageRef(i, 0, f"{i}.jpg", url) for i, url in enumerate(urls)]
settings = DownloadSettings(allow_private_networks=True, per_site=1, fetch_processes=2)
download_shard(refs, data_dir=Path(sys.argv[1]), shard=1, settings=settings)
"""


@pytest.mark.timeout(60)
@pytest.mark.system
def test_workers_die_with_a_killed_parent(server, tmp_path: Path):
    slow = {f"/{i}.jpg": (lambda h: send(h, 200, SMALL)) for i in range(40)}
    servers = [server(slow, host=host, latency=0.5) for host in HOSTS[:2]]
    urls = [s.url(f"/{i}.jpg") for s in servers for i in range(40)]
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path), *urls])
    try:
        workers: list[psutil.Process] = []
        while len(workers) < 2:
            assert parent.poll() is None
            workers = psutil.Process(parent.pid).children()
            time.sleep(0.05)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert alive == [] and len(gone) == 2
    finally:
        parent.kill()
