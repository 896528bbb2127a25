"""Politeness across runs: download runs at once, in processes of their own, share each site's
budget and its pauses through the site ledger (SQLite on one machine, PostgreSQL for many).

Sites with several host names come from a hosts file of the test's own, bound over /etc/hosts
in a mount namespace of the run's process (`unshare`, as root), so that the names resolve
through the system resolver to the test's servers on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mmc4_assets.corpus.status import retryable_mask
from mmc4_assets.downloader import DownloadSettings, ImageRef, download_shard
from mmc4_assets.downloader.politeness.ledger import SiteLedger
from mmc4_assets_tests.support.local_server import LocalServer, image_bytes, send

pytestmark = pytest.mark.system

SMALL = image_bytes(300, 200)
BASE_SETTINGS = {
    "allow_private_networks": True,
    "connect_timeout": 2.0,
    "read_timeout": 5.0,
    "total_deadline": 30.0,
    "backoff_base": 0.2,
    "backoff_max": 0.5,
    "fetch_processes": 1,
    "adaptive": False,  # the fixed budgets' guarantees; learned limits: test_capacity_web.py
    "standin_min_urls": 0,  # one picture under many URLs: not a stand-in (test_standins_run.py)
}


class Runs:
    """Download runs started as processes (each a process group), optionally resolving names
    through a hosts file of the test's own."""

    def __init__(self, folder: Path, names: list[str] = ()) -> None:
        self.folder = folder
        self.processes: list[subprocess.Popen] = []
        self.hosts_file = None
        if names:
            self.hosts_file = folder / "hosts"
            lines = Path("/etc/hosts").read_text() + "".join(f"127.0.0.1 {n}\n" for n in names)
            self.hosts_file.write_text(lines)

    def start(self, name: str, urls: list[str], settings: dict, shard: int) -> subprocess.Popen:
        spec = {
            "refs": [[doc, 0, f"{doc}.jpg", url] for doc, url in enumerate(urls)],
            "data_dir": str(self.folder / "data"),
            "shard": shard,
            "settings": {**BASE_SETTINGS, **settings},
            "result": str(self.folder / f"{name}.json"),
        }
        spec_path = self.folder / f"{name}.spec.json"
        spec_path.write_text(json.dumps(spec))
        command = [sys.executable, "-m", "mmc4_assets_tests.support.shard_runner", spec_path]
        if self.hosts_file is not None:
            bind = 'mount --bind "$0" /etc/hosts && exec "$@"'
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", bind,
                       str(self.hosts_file), *map(str, command)]  # fmt: skip
        process = subprocess.Popen(command, start_new_session=True)
        self.processes.append(process)
        return process

    def result(self, name: str, process: subprocess.Popen, timeout: float = 120) -> dict:
        assert process.wait(timeout=timeout) == 0, f"run {name} failed"
        return json.loads((self.folder / f"{name}.json").read_text())

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def runs(tmp_path):
    made: list[Runs] = []

    def make(names: list[str] = ()) -> Runs:
        made.append(Runs(tmp_path, names))
        return made[-1]

    yield make
    for group in made:
        group.close()


def site_server(latency: float, images: int = 120, **routes) -> LocalServer:
    paths = {f"/{i}.jpg": (lambda h: send(h, 200, SMALL)) for i in range(images)}
    return LocalServer({**paths, **routes}, latency=latency)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-run"])
def test_runs_at_once_never_exceed_a_sites_budget(runs, ledger_url, shared):
    # One site behind three names, its images spread over three runs started together.
    names = ["i0.pics.test", "i1.pics.test", "i2.pics.test"]
    server = site_server(latency=0.15)
    try:
        group = runs(names)
        settings = {"per_site": 4, "ledger_url": ledger_url if shared else None}
        started = [
            group.start(
                f"run{n}",
                [f"http://{names[i % 3]}:{server.port}/{n * 30 + i}.jpg" for i in range(30)],
                settings,
                shard=n,
            )
            for n in range(3)
        ]
        results = [group.result(f"run{n}", process) for n, process in enumerate(started)]
    finally:
        server.close()
    assert all(set(r["outcomes"]) == {"ok"} for r in results)
    assert all(r["stats"]["most_requests_per_site"] <= 4 for r in results)
    if shared:
        assert server.max_active <= 4  # every run, every name: one budget
        assert sum(r["stats"]["ledger_transactions"] for r in results) > 0
    else:
        assert server.max_active > 4  # what the shared budget prevents


@pytest.mark.timeout(180)
def test_a_killed_runs_slots_come_back_within_its_lease(runs, tmp_path):
    ledger_url = f"sqlite:///{tmp_path}/ledger.sqlite"
    lease = 3.0
    server = site_server(latency=1.0)
    try:
        group = runs()
        settings = {"per_site": 2, "ledger_url": ledger_url, "site_lease_seconds": lease}
        greedy = group.start(
            "greedy", [server.url(f"/{i}.jpg") for i in range(60)], settings, shard=1
        )
        deadline = time.monotonic() + 60
        while server.fetches() < 2:  # it holds both slots, its requests in flight
            assert time.monotonic() < deadline and greedy.poll() is None
            time.sleep(0.05)
        os.killpg(greedy.pid, signal.SIGKILL)  # no goodbye: its slots stay in the ledger
        greedy.wait()
        killed_at = time.monotonic()
        seen = len(server.requests)
        patient = group.start(
            "patient", [server.url(f"/{i}.jpg") for i in range(60, 64)], settings, shard=2
        )
        result = group.result("patient", patient)
    finally:
        server.close()
    assert set(result["outcomes"]) == {"ok"}
    first = min(t for path, t, _ in server.requests[seen:] if path != "/robots.txt")
    # The dead run's slots were renewed at most lease/3 before it died, so they expired at
    # least 2 s after the kill: the new run waited for them, then got them.
    assert first - killed_at >= lease * 2 / 3 - 0.5
    assert first - killed_at <= lease + 10  # a hang guard, not a timing


class ThrottlingServer(LocalServer):
    """Answers 429 with Retry-After to everything for its first ``window`` seconds, then serves;
    remembers when each 429 went out and when each request came in."""

    def __init__(self, window: float, retry_after: int, images: int) -> None:
        self.first: float | None = None
        self.sent_429: list[float] = []
        self.lock = threading.Lock()

        def image(h):
            now = time.monotonic()
            with self.lock:
                self.first = self.first or now
                throttling = now - self.first < window
                if throttling:
                    self.sent_429.append(now)
            if throttling:
                send(h, 429, b"slow down", "text/plain", {"Retry-After": str(retry_after)})
            else:
                send(h, 200, SMALL)

        super().__init__({f"/{i}.jpg": image for i in range(images)}, latency=0.05)


@pytest.mark.timeout(180)
def test_a_429_pauses_the_site_for_every_run(runs, ledger_url):
    retry_after, grace = 4, 1.0
    server = ThrottlingServer(window=1.0, retry_after=retry_after, images=90)
    try:
        group = runs()
        settings = {"per_site": 8, "ledger_url": ledger_url}
        started = [
            group.start(
                f"run{n}", [server.url(f"/{n * 30 + i}.jpg") for i in range(30)], settings, n
            )
            for n in range(3)
        ]
        results = [group.result(f"run{n}", process) for n, process in enumerate(started)]
    finally:
        server.close()
    assert server.sent_429, "the site never throttled"
    arrivals = [t for path, t, _ in server.requests if path != "/robots.txt"]
    # Nothing reached the site inside a pause it asked for, past the moment every run could
    # have heard of it (requests already on their way when the 429 went out, and the ledger's
    # poll): not from the run that got the 429, nor from the others.
    inside = [t for t in arrivals if any(s + grace < t < s + retry_after for s in server.sent_429)]
    assert inside == []
    assert all(set(r["outcomes"]) == {"ok"} for r in results)  # they waited, then got them
    assert sum(r["stats"]["throttles"] for r in results) == len(server.sent_429)
    assert all(r["stats"]["sites_paused"] == 1 for r in results)


def test_a_site_that_throttles_repeatedly_ends_with_a_lower_budget(runs, tmp_path):
    ledger_url = f"sqlite:///{tmp_path}/ledger.sqlite"
    count = {"n": 0}
    lock = threading.Lock()

    def image(h):  # ten images served, then 429 to everything
        with lock:
            count["n"] += 1
            throttle = count["n"] > 10
        if throttle:
            send(h, 429, b"", "text/plain", {"Retry-After": "0"})
        else:
            send(h, 200, SMALL)

    server = LocalServer({f"/{i}.jpg": image for i in range(30)}, latency=0.05)
    try:
        group = runs()
        settings = {"per_site": 8, "ledger_url": ledger_url}
        process = group.start("run", [server.url(f"/{i}.jpg") for i in range(30)], settings, 1)
        result = group.result("run", process)
    finally:
        server.close()
    assert set(result["outcomes"]) == {"ok", "rate_limited"}
    ledger = SiteLedger.open(ledger_url)
    state = ledger.states(["127.0.0.1"])["127.0.0.1"]
    ledger.close()
    # 8, halved at each repeat: the site ends the run at one connection, for every run.
    assert state.strikes >= 4 and state.cap == 1


def test_a_run_that_cannot_get_a_sites_slots_leaves_its_images_for_later(tmp_path):
    # Another run holds every slot of the site (and keeps renewing): this run waits
    # total_deadline with nothing in flight, then ends the site's images rate_limited.
    ledger_url = f"sqlite:///{tmp_path}/ledger.sqlite"
    other = SiteLedger.open(ledger_url, lease_seconds=600)
    assert other.sync("other run", {"127.0.0.1": (8, 8)})[0] == {"127.0.0.1": 8}
    server = site_server(latency=0.0, images=5)
    try:
        settings = DownloadSettings(
            **{**BASE_SETTINGS, "total_deadline": 2.0}, ledger_url=ledger_url
        )
        refs = [ImageRef(i, 0, f"{i}.jpg", server.url(f"/{i}.jpg")) for i in range(5)]
        table = download_shard(refs, data_dir=tmp_path / "data", shard=1, settings=settings)
    finally:
        server.close()
        other.close()
    assert set(table.outcome) == {"rate_limited"} and server.count() == 0
    assert table.error.str.contains("no connection of its budget free").all()
    assert retryable_mask(table).all()
