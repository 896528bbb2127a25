"""Fetch a shard's images in several processes, each owning a share of its sites.

One process's event loop, TLS and HTTP parsing hold the GIL that its decoders need, so a single
process tops out well short of two cores. Each worker here runs the same fetch loop on its own
sites (a site lives in exactly one worker, so its slots, pauses and the hosts' breakers stay
whole), with its share of the concurrency, byte and decoder budgets; names were allocated by the
parent, so workers never write the same file. Rows stream back to the parent as they finish, so
progress and accounting stay in one place; a worker's site messages go to the run's broker in the
parent, and its answers come back on the worker's stdin. A worker dies with its parent
(PR_SET_PDEATHSIG on Linux) and the parent kills its workers on any error: a killed run leaves
no process writing behind it.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable

from ..politeness.broker import SiteBroker
from ..politeness.robots import RobotsEntry
from ..settings import DownloadSettings
from ..storing.store import ImageJob

# Images to fetch below which one process does it: a worker costs ~0.5 s of imports.
MIN_IMAGES_PER_WORKER = 100
# A process's loop (TLS, HTTP) and its decoder share one GIL, and each keeps about half a core
# busy on a web of many TLS hosts: two per CPU fill the CPUs (measured: benchmarks/README.md).
PROCESSES_PER_CPU = 2
_FLUSH_ROWS, _FLUSH_SECONDS = 64, 0.25


class WorkerFailed(RuntimeError):
    """A fetch worker died or raised; the message carries its error."""


def worker_count(settings: DownloadSettings, images: int) -> int:
    """How many fetch processes a shard with ``images`` to fetch gets (1: in-process)."""
    if settings.fetch_processes:
        return max(1, min(settings.fetch_processes, images))
    wanted = PROCESSES_PER_CPU * (os.cpu_count() or 1)
    return max(1, min(wanted, images // MIN_IMAGES_PER_WORKER))


def split_by_site(jobs: list[ImageJob], parts: int) -> list[list[ImageJob]]:
    """``parts`` groups of whole sites with about equal image counts (largest sites first)."""
    by_site: dict[str, list[ImageJob]] = {}
    for job in jobs:
        by_site.setdefault(job.site, []).append(job)
    bins: list[tuple[int, int]] = [(0, i) for i in range(parts)]
    groups: list[list[ImageJob]] = [[] for _ in range(parts)]
    for site_jobs in sorted(by_site.values(), key=len, reverse=True):
        load, index = heapq.heappop(bins)
        groups[index].extend(site_jobs)
        heapq.heappush(bins, (load + len(site_jobs), index))
    return [group for group in groups if group]


def share_of(settings: DownloadSettings, parts: int, decoders: int) -> DownloadSettings:
    """One worker's settings: its share of requests, bytes and decoders."""
    return dataclasses.replace(
        settings,
        max_concurrency=max(1, math.ceil(settings.max_concurrency / parts)),
        max_bytes_in_flight=max(1, settings.max_bytes_in_flight // parts),
        decode_workers=max(1, decoders // parts),
        fetch_processes=1,
    )


def fetch_in_workers(
    groups: list[list[ImageJob]],
    settings: DownloadSettings,
    shard: int,
    finish: Callable[[int, dict], None],
    tick: Callable[[int], None],
    tick_interval: float,
    broker: SiteBroker,
    robots: dict[str, RobotsEntry],
) -> tuple[list[RobotsEntry], Counter[str]]:
    """Run one worker per group and call ``finish`` for every row they send.

    ``tick(bytes received so far)`` runs every ``tick_interval`` seconds on the calling thread
    (progress reports). ``robots``: the cached robots.txt entries of the shard's origins. Returns
    the robots.txt entries the workers fetched and their politeness counters. Raises
    WorkerFailed, after killing every worker, when any one fails.
    """
    changed = threading.Event()
    workers = [_Worker(group, settings, shard, finish, changed, broker, robots) for group in groups]
    try:
        next_tick = time.monotonic() + tick_interval
        while True:
            changed.clear()
            failed = [worker.error for worker in workers if worker.error is not None]
            if failed:
                raise WorkerFailed(failed[0])
            if all(worker.finished.is_set() for worker in workers):
                break
            if not changed.wait(max(0.0, next_tick - time.monotonic())):
                tick(sum(worker.bytes for worker in workers))
                next_tick = time.monotonic() + tick_interval
        tick(sum(worker.bytes for worker in workers))
    finally:
        for worker in workers:
            worker.stop()
    fetched = [entry for worker in workers for entry in worker.robots_fetched]
    politeness: Counter[str] = Counter()
    for worker in workers:
        most = worker.politeness.pop("most_requests_per_site", 0)
        politeness.update(worker.politeness)
        politeness["most_requests_per_site"] = max(politeness["most_requests_per_site"], most)
    return fetched, politeness


class _Worker:
    """One child process and the thread that reads its rows."""

    def __init__(self, jobs, settings, shard, finish, changed, broker, robots) -> None:
        self.finish = finish
        self.changed = changed
        self.bytes = 0
        self.error: str | None = None
        self.robots_fetched: list[RobotsEntry] = []
        self.politeness: Counter[str] = Counter()
        self.finished = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._stdin_lock = threading.Lock()
        self.broker = broker
        self.client = broker.connect(self._deliver)
        origins = {job.origin for job in jobs}
        cached = {origin: entry for origin, entry in robots.items() if origin in origins}
        payload = {"jobs": jobs, "settings": settings, "shard": shard, "robots": cached}
        self.reader = threading.Thread(
            target=self._read, args=(payload,), name="mmc4-fetch-worker", daemon=True
        )
        self.reader.start()

    def _deliver(self, messages: list) -> None:
        """The broker's answers, to the worker's stdin (called from the broker's thread)."""
        with self._stdin_lock:
            if self.process.stdin.closed:
                return
            try:
                pickle.dump(messages, self.process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                self.process.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass  # the worker is gone; its reader reports why

    def _read(self, payload: dict) -> None:
        try:
            with self._stdin_lock:
                pickle.dump(payload, self.process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                self.process.stdin.flush()
            while True:
                kind, *body = pickle.load(self.process.stdout)
                if kind == "rows":
                    rows, self.bytes = body
                    for position, row in rows:
                        self.finish(position, row)
                elif kind == "sites":
                    self.broker.submit(self.client, body[0])
                elif kind == "done":
                    self.robots_fetched, self.politeness = body
                    return
                else:
                    self.error = body[0]
                    return
        except (EOFError, OSError, pickle.UnpicklingError) as error:
            code = self.process.poll()
            self.error = f"fetch worker {self.process.pid} died (exit {code}): {error!r}"
        except BaseException as error:  # noqa: BLE001 - reported to the waiting thread
            self.error = f"fetch worker reader failed: {error!r}"
        finally:
            self.finished.set()
            self.changed.set()

    def stop(self) -> None:
        if self.process.poll() is None and (self.error is not None or not self.finished.is_set()):
            self.process.kill()
        with self._stdin_lock:
            try:
                self.process.stdin.close()
            except OSError:
                pass
        self.process.wait()
        self.process.stdout.close()
        self.reader.join(timeout=5)


# -- the worker's side ------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when its parent dies; exit if it already has."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def _serve() -> None:
    from .fetch_loop import FetchLoop  # heavy imports after the death pact
    from .process_tuning import tune_memory

    tune_memory()
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but messages may reach the pipe
    payload = pickle.load(sys.stdin.buffer)
    out_lock = threading.Lock()

    def send(*message) -> None:
        with out_lock:
            pickle.dump(message, out, protocol=pickle.HIGHEST_PROTOCOL)
            out.flush()

    def connect(deliver: Callable[[list], None]) -> Callable[[list], None]:
        """The broker's answers arrive on stdin, read by a thread; messages go out as "sites"."""

        def read_answers() -> None:
            try:
                while True:
                    deliver(pickle.load(sys.stdin.buffer))
            except (EOFError, OSError, pickle.UnpicklingError, RuntimeError):
                return  # the parent closed our stdin (the run is ending) or the loop is gone

        threading.Thread(target=read_answers, name="mmc4-site-answers", daemon=True).start()
        return lambda messages: send("sites", messages)

    class WorkerRun(FetchLoop):
        """The fetch loop, its rows sent to the parent in batches instead of kept."""

        def __init__(self) -> None:
            super().__init__(payload["shard"], payload["settings"])
            self.outbox: list[tuple[int, dict]] = []
            self.flushed_at = time.monotonic()

        def keep(self, position: int, row: dict) -> None:
            self.outbox.append((position, row))
            now = time.monotonic()
            if len(self.outbox) >= _FLUSH_ROWS or now - self.flushed_at >= _FLUSH_SECONDS:
                self.flush()

        def flush(self) -> None:
            send("rows", self.outbox, self._bytes)
            self.outbox = []
            self.flushed_at = time.monotonic()

    run = WorkerRun()
    run.robots_cache = payload["robots"]
    try:
        run.fetch_here(payload["jobs"], connect)
        run.flush()
        send("done", run.robots_fetched, run.politeness)
    except BaseException as error:  # noqa: BLE001 - reported to the parent, then exit
        import traceback

        send("error", "".join(traceback.format_exception(error)))
        raise SystemExit(1) from None


if __name__ == "__main__":
    _die_with_parent(int(sys.argv[1]))
    _serve()
    # Skip interpreter teardown (collecting every body buffer); the parent has all rows.
    sys.stdout.flush()
    os._exit(0)
