"""A crashed run never wedges the pipeline: real runs killed with SIGKILL, then run again.

CLI runs start as a user's shell starts them (a process group of their own) and are killed with
`kill -9` on the group, as an OOM kill or a reboot would. Every process started here is killed and
reaped at teardown, and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import psutil
import pytest
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from PIL import Image

from mmc4_assets.corpus.status import check_status, read_status
from mmc4_assets.downloader import iter_image_refs
from mmc4_assets.run_health import live_runs
from mmc4_assets_tests.support.instance_files import write_home
from mmc4_assets_tests.support.materialize import materialize_shard
from mmc4_assets_tests.support.shards import SHARD, zip_shard
from mmc4_devtools.loopback_web import LoopbackWeb
from mmc4_devtools.sample_shard import write_sample_shard

pytestmark = pytest.mark.system

BIN = Path(sys.executable).parent
PROJECT_ROOT = Path(__file__).resolve().parents[1]
MATERIALIZE = ("dagster", "asset", "materialize", "-m", "mmc4_assets.definitions")
DOWNLOAD = [*MATERIALIZE, "--select", "downloaded_images,status_report", "--partition", "42"]
DOCS = [*MATERIALIZE, "--select", "raw_docs", "--partition", "42"]
RUN_TIMEOUT = 240  # seconds for one whole CLI run on a busy 2-core machine


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


class Processes:
    """CLI runs started in their own process group; all of them are killed at teardown."""

    def __init__(self, env: dict, folder: Path):
        self.env, self.folder, self.started = env, folder, []
        self.home, self.data = env["DAGSTER_HOME"], Path(env["MMC4_DATA_DIR"])

    def start(self, args: list[str], name: str) -> subprocess.Popen:
        with open(self.folder / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                [str(BIN / args[0]), *args[1:]],
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(process)
        return process

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def finish(self, process: subprocess.Popen, name: str) -> str:
        """Wait for a run to end by itself; its log."""
        try:
            process.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill(process)
            pytest.fail(f"{name} did not finish in {RUN_TIMEOUT} s:\n{self.log(name)[-3000:]}")
        output = self.log(name)
        assert process.returncode == 0, output[-3000:]
        return output

    @staticmethod
    def kill(process: subprocess.Popen) -> None:
        """kill -9 on the whole group (the run worker and its step processes), then reap."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def kill_all(self) -> None:
        for process in self.started:
            self.kill(process)


@pytest.fixture
def slow_web():
    """Images take a while (400 ms a request, 8 at a time), so a run can be killed mid-way."""
    with LoopbackWeb(hosts=1, latency_ms=400.0) as web:
        yield web


@pytest.fixture
def cli(tmp_path, monkeypatch, slow_web):
    """A persistent instance with the project's dagster.yaml settings, a 100-document shard whose
    images are on the slow web, and the variables a user sets; the test process sees them too."""
    home, source, data = tmp_path / "home", tmp_path / "source", tmp_path / "data"
    source.mkdir()
    write_home(home)
    plain = source / f"docs_no_face_shard_{SHARD}_v2.jsonl"
    write_sample_shard(plain, documents=100, seed=11, image_base_url=slow_web.base_urls[0])
    zip_shard(plain)
    for name, value in {
        "DAGSTER_HOME": str(home),
        "MMC4_DATA_DIR": str(data),
        "MMC4_DOCS_URL": str(source),
        "MMC4_ALLOW_PRIVATE_NETWORKS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    processes = Processes(dict(os.environ, VIRTUAL_ENV=sys.prefix), tmp_path)
    yield processes
    processes.kill_all()


def runs_oldest_first(home: str) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.from_config(home) as instance:
        records = instance.get_run_records(order_by="create_timestamp", ascending=True)
        return [record.dagster_run for record in records]


def failure_messages(home: str, run_id: str) -> list[str]:
    """The run's RUN_FAILURE messages: one, or one per run that found it dead at the same moment
    (two reruns started at once may both fail the dead run they both see)."""
    with dg.DagsterInstance.from_config(home) as instance:
        events = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        assert events, f"run {run_id} has no RUN_FAILURE event"
        return [event.message or "" for event in events]


def saved_images(folder: Path) -> set[str]:
    """Files under their final names (a temporary name starts with a dot)."""
    if not folder.is_dir():
        return set()
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


def assert_one_right_row_per_image(data: Path, shard: int = SHARD) -> None:
    refs = list(iter_image_refs(data / "raw_docs" / f"{shard}.jsonl"))
    table = read_status(data, shard)
    assert check_status(table, refs, data) == []
    assert set(table["outcome"]) == {"ok"}
    for row in table.itertuples():
        assert hashlib.sha256((data / row.path).read_bytes()).hexdigest() == row.sha256


def fetch_docs_in_process(home: str) -> None:
    with dg.DagsterInstance.from_config(home) as instance:
        assert materialize_shard(instance, "raw_docs").success


@pytest.mark.system(order=1)
def test_a_download_killed_twice_then_started_twice_at_once(cli, slow_web):
    """The issue's case: kill -9 mid-download, twice; then the rerun, started twice at once
    (a double-click). The first rerun cleans up and downloads the rest; the other waits for it,
    asleep, and then finds nothing left to fetch."""
    fetch_docs_in_process(cli.home)
    data, images = cli.data, cli.data / "images" / "42"
    refs = list(iter_image_refs(data / "raw_docs" / "42.jsonl"))

    first = cli.start(DOWNLOAD, "first")
    wait_until(lambda: len(saved_images(images)) >= 10, RUN_TIMEOUT, "the first run's images")
    cli.kill(first)
    after_first = len(saved_images(images))
    second = cli.start(DOWNLOAD, "second")
    wait_until(lambda: len(saved_images(images)) >= after_first + 10, RUN_TIMEOUT, "the second run")
    cli.kill(second)
    before_rerun = saved_images(images)
    assert len(before_rerun) < len(refs), "the kills came too late to test anything"

    slow_web.reset_counters()
    reruns = {name: cli.start(DOWNLOAD, name) for name in ("rerun", "double_click")}

    def waiting() -> str | None:
        """The rerun waiting for the other to finish its download."""
        for name, other in (("rerun", "double_click"), ("double_click", "rerun")):
            if "waiting for shard(s) 42" in cli.log(name) and "free after" not in cli.log(name):
                if "images, " in cli.log(other):
                    return name
        return None

    wait_until(waiting, RUN_TIMEOUT, "one rerun to wait for the other")
    waiter = waiting()
    # While it waits it sleeps: a busy loop would use a whole core.
    cpu_before, wall_before = tree_cpu_seconds(reruns[waiter].pid), time.monotonic()
    time.sleep(4)
    cpu = tree_cpu_seconds(reruns[waiter].pid) - cpu_before
    wall = time.monotonic() - wall_before
    assert "free after" not in cli.log(waiter), "the wait ended before it could be measured"
    assert cpu < 0.25 * wall, f"{cpu:.1f} s of CPU in {wall:.1f} s while waiting"
    logs = {name: cli.finish(process, name) for name, process in reruns.items()}

    first_run, second_run, *rerun_runs = runs_oldest_first(cli.home)[1:]  # after raw_docs
    assert [first_run.status, second_run.status] == [dg.DagsterRunStatus.FAILURE] * 2
    assert [run.status for run in rerun_runs] == [dg.DagsterRunStatus.SUCCESS] * 2
    # Each cleanup is logged once, by the run that did it, with the reason; the dead runs' own
    # logs say what happened to them.
    assert f"cleaned up dead run {first_run.run_id[:8]} (shard 42)" in cli.log("second")
    # (Both reruns may see the dead run at the same moment: then both say they failed it.)
    cleanup = f"cleaned up dead run {second_run.run_id[:8]} (shard 42): its processes are gone"
    assert any(cleanup in log for log in logs.values())
    for dead in (first_run, second_run):
        for message in failure_messages(cli.home, dead.run_id):
            assert "Run worker gone: its processes are gone" in message
    (line,) = [line for line in logs[waiter].splitlines() if "waiting for shard(s) 42" in line]
    waiter_id, holder_id = re.search(r" - (\w{8})-.* held by run (\w{8}) ", line).groups()
    assert {waiter_id, holder_id} == {run.run_id[:8] for run in rerun_runs}
    assert "free after" in logs[waiter]

    assert_one_right_row_per_image(data)
    table = read_status(data, SHARD)
    kept = table[table["path"].map(lambda p: Path(p).name in before_rerun)]
    assert len(kept) == len(before_rerun)
    assert [slow_web.requests_for(url) for url in kept["url"]] == [0] * len(kept)
    # Every missing image was fetched once: the run that waited fetched none.
    assert slow_web.total_requests == len(refs) - len(before_rerun)
    assert not [p for p in images.iterdir() if p.name.endswith(".part")]


@pytest.fixture
def dripping_docs(tmp_path):
    """The shard served over HTTP; its first download trickles for a minute, later ones don't."""
    folder = tmp_path / "dripped"
    folder.mkdir()
    plain = folder / f"docs_no_face_shard_{SHARD}_v2.jsonl"
    write_sample_shard(plain, documents=40, seed=3, image_base_url="http://127.0.0.1:9")
    body = zip_shard(plain).read_bytes()
    dripping, stop, requests = threading.Event(), threading.Event(), []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            step = len(body) // 300 + 1
            with contextlib.suppress(OSError):
                for start in range(0, len(body), step):
                    self.wfile.write(body[start : start + step])
                    self.wfile.flush()
                    if len(requests) == 1:
                        dripping.set()
                        if stop.wait(0.2):
                            return

        def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address
    yield f"http://{host}:{port}/docs_no_face_shard_{{shard}}_v2.jsonl.zip", dripping
    stop.set()
    server.shutdown()
    server.server_close()


@pytest.mark.system(order=10)
def test_a_docs_run_killed_mid_fetch_does_not_wedge_the_rerun(cli, dripping_docs):
    url, dripping = dripping_docs
    cli.env["MMC4_DOCS_URL"] = url
    killed = cli.start(DOCS, "killed")
    wait_until(dripping.is_set, RUN_TIMEOUT, "the docs run to start fetching the shard")
    cli.kill(killed)
    assert not (cli.data / "raw_docs" / "42.jsonl").exists()  # nothing partial under that name

    output = cli.finish(cli.start(DOCS, "rerun"), "rerun")
    dead, rerun = runs_oldest_first(cli.home)
    assert (dead.status, rerun.status) == (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS)
    assert f"cleaned up dead run {dead.run_id[:8]} (shard 42): its processes are gone" in output
    assert all("Run worker gone" in m for m in failure_messages(cli.home, dead.run_id))
    assert len((cli.data / "raw_docs" / "42.jsonl").read_bytes().splitlines()) == 40


def tree_cpu_seconds(pid: int) -> float:
    """CPU time used so far by a process and its children."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def mount_tmpfs(folder: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    folder.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        check=True,
        capture_output=True,
    )


def test_a_full_disk_fails_the_run_clearly_and_leaves_only_whole_files(
    tmp_path, monkeypatch, instance, shard_folder
):
    small = tmp_path / "small"
    mount_tmpfs(small, "2m")
    try:
        monkeypatch.setenv("MMC4_DATA_DIR", str(small))
        monkeypatch.setenv("MMC4_DOCS_URL", str(shard_folder))
        monkeypatch.setenv("MMC4_ALLOW_PRIVATE_NETWORKS", "1")
        result = materialize_shard(
            instance, "raw_docs downloaded_images status_report", raise_on_error=False
        )
        assert not result.success
        (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert failure.step_key == "download_images"
        message = failure.step_failure_data.user_failure_data.description
        assert f"The data folder {small} is full (No space left on device)" in message
        assert "shard(s) 42" in message
        images = list((small / "images" / "42").iterdir())
        assert images and not [p for p in images if p.name.startswith(".")]
        for path in images:  # every file under a final name is a whole, valid image
            with Image.open(path) as image:
                image.load()
        assert not (small / "status" / "42.parquet").exists()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False, capture_output=True)


def submit_backfill(home: str, shards: list[str]) -> str:
    """What the UI's "Materialize" over a partition range does: an asset backfill, which the
    daemon turns into runs (Dagster's own API; the UI calls it through GraphQL)."""

    from mmc4_assets.definitions import defs

    with dg.DagsterInstance.from_config(home) as instance:
        backfill = PartitionBackfill.from_asset_partitions(
            backfill_id=uuid.uuid4().hex[:8],
            asset_graph=defs.resolve_asset_graph(),
            partition_names=shards,
            asset_selection=[dg.AssetKey("downloaded_images"), dg.AssetKey("status_report")],
            backfill_timestamp=time.time(),
            tags={},
            dynamic_partitions_store=instance,
            all_partitions=False,
            title=None,
            description=None,
            run_config=None,
        )
        instance.add_backfill(backfill)
        return backfill.backfill_id


@pytest.mark.timeout(2 * RUN_TIMEOUT + 120)
@pytest.mark.system(order=2)
def test_a_backfill_survives_losing_its_host_mid_download(cli, slow_web):
    """The daemon, its code server and the runs it launched are killed at once (a lost host);
    when the daemon comes back, dead_runs_sensor fails the dead runs, run retries re-execute them
    and the backfill finishes every shard."""
    shards = [42, 100]  # not adjacent: one run each
    source = Path(os.environ["MMC4_DOCS_URL"])
    for path in source.iterdir():
        path.unlink()
    for shard in shards:
        plain = source / f"{shard}.jsonl"
        write_sample_shard(plain, documents=50, seed=shard, image_base_url=slow_web.base_urls[0])
    daemon = ["dagster-daemon", "run", "-m", "mmc4_assets.definitions"]
    # Dagster's own knob: the daemon that turns failed runs into retries looks every second, not
    # every five (only how soon the retries start; what they do is unchanged).
    cli.env["DAGSTER_EVENT_LOG_CONSUMER_DAEMON_INTERVAL_SECONDS"] = "1"
    # Before the daemon starts, so that the two never create the SQLite storage at once. Two
    # download runs at a time: the test need not wait for the retries one after the other.
    with dg.DagsterInstance.from_config(cli.home) as instance:
        instance.event_log_storage.set_concurrency_slots("mmc4_download", 2)
        for shard in shards:
            assert materialize_shard(instance, "raw_docs", str(shard)).success
    backfill_id = submit_backfill(cli.home, [str(s) for s in shards])
    first_daemon = cli.start(daemon, "daemon1")

    def downloading() -> int | None:
        for shard in shards:
            if not (cli.data / "status" / f"{shard}.parquet").exists():
                if len(saved_images(cli.data / "images" / str(shard))) >= 10:
                    return shard
        return None

    def every_started_run_reported() -> bool:
        # (A run killed before its first step is found dead only dead_after_seconds after it
        # started: test_run_health covers that; this test wants the by-process-id path.)
        with dg.DagsterInstance.from_config(cli.home) as instance:
            return all(run.steps for run in live_runs(instance))

    wait_until(
        lambda: downloading() and every_started_run_reported(),
        RUN_TIMEOUT,
        "a backfill run to be downloading",
    )
    cli.kill(first_daemon)  # the whole process group: daemon, code server, run workers, steps
    killed_shard = downloading()
    on_disk = saved_images(cli.data / "images" / str(killed_shard))
    with dg.DagsterInstance.from_config(cli.home) as instance:
        killed = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    assert killed, "no run was left in progress by the kill"

    slow_web.reset_counters()
    cli.start(daemon, "daemon2")
    with dg.DagsterInstance.from_config(cli.home) as instance:

        def backfill_done() -> bool:
            return instance.get_backfill(backfill_id).status != BulkActionStatus.REQUESTED

        wait_until(backfill_done, 2 * RUN_TIMEOUT, "the backfill to finish")
        assert instance.get_backfill(backfill_id).status == BulkActionStatus.COMPLETED_SUCCESS
        for run in killed:
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
            messages = failure_messages(cli.home, run.run_id)
            assert all("Run worker gone: its processes are gone" in m for m in messages)
            assert any("Marked by dead_runs_sensor" in m for m in messages)
            (retry,) = instance.get_runs(dg.RunsFilter(tags={"dagster/parent_run_id": run.run_id}))
            assert retry.status == dg.DagsterRunStatus.SUCCESS
    for shard in shards:
        assert_one_right_row_per_image(cli.data, shard)
    table = read_status(cli.data, killed_shard)
    kept = table[table["path"].map(lambda p: Path(p).name in on_disk)]
    assert len(kept) == len(on_disk)
    assert [slow_web.requests_for(url) for url in kept["url"]] == [0] * len(kept)


@pytest.mark.system(order=9)
def test_a_run_declared_dead_while_working_stops_writing(cli, slow_web):
    """If others gave up on a run (e.g. its host was cut off longer than dead_after_seconds) and
    it comes back, its heartbeat sees that and stops the step: one shard, one writer."""
    fetch_docs_in_process(cli.home)
    images = cli.data / "images" / "42"
    slow_web.latency_ms = 1500.0  # about 5 images a second: the shard takes a minute
    process = cli.start(DOWNLOAD, "revenant")
    wait_until(lambda: len(saved_images(images)) >= 10, RUN_TIMEOUT, "the run's first images")
    with dg.DagsterInstance.from_config(cli.home) as instance:
        (run,) = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        instance.report_run_failed(run, "declared dead by another host (this test)")
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the run went on working after it was declared dead")
    log = cli.log("revenant")
    assert "this run was marked FAILURE while this step was still working" in log
    assert len(saved_images(images)) < len(list(iter_image_refs(cli.data / "raw_docs/42.jsonl")))
    assert not (cli.data / "status" / "42.parquet").exists()
