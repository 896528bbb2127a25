"""Download one shard's images: plan, fetch, validate, store, and account for every image.

One event loop runs every request (hundreds in flight cost a coroutine and a socket each, so
latency is hidden by numbers, not threads); a small thread pool decodes and writes, at most one
image per CPU, since Pillow releases the GIL. Memory is bounded by body bytes: a new request
starts only while the bytes being received or waiting for a decoder, plus a mean body for each
request in flight, stay within ``max_bytes_in_flight`` (one request may always run). A host
queue keeps every host within ``per_host`` requests, busiest hosts first; a retry waits in a
timed queue rather than in a slot; a per-host breaker ends the images of hosts that refuse or
never answer. Every image ends with exactly one status row, and no run outlives its images'
deadlines.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mmc4_assets.corpus.atomic import remove_stale_temporaries
from mmc4_assets.corpus.status import ALL_COLUMNS, normalize_status, read_status

from ..fetching.breaker import HostBreaker
from ..fetching.client import ByteMeter, FetchResult, HttpClient, retry_delay
from ..fetching.urls import InvalidUrl, check_url, host_of
from ..refs import ImageRef
from ..settings import DownloadSettings, tls_context
from ..storing.names import NameAllocator, contained_path
from ..storing.store import (
    ImageJob,
    check_local_copy,
    failure_row,
    held_copy,
    remove_file,
    store_body,
    store_outcome,
)
from .hosts import HostQueue


@dataclass
class ProgressInfo:
    """A progress snapshot for the callback."""

    done: int
    total: int
    outcomes: dict[str, int]
    elapsed: float
    images_per_second: float
    bytes: int


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_malloc_tuned = False


def _tune_malloc() -> None:
    """Keep glibc from hoarding freed image buffers across threads (Linux only).

    Threads allocating and freeing bodies of a few hundred KB make glibc grow one arena per
    thread and raise its mmap threshold, so freed memory is kept, not returned. A fixed 64 KB
    mmap threshold (bodies and pixels go straight back to the OS) and four arenas keep it flat.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_ARENA_MAX, 4)
        libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 1024 * 1024)
    except (OSError, AttributeError):
        pass


def _previous_rows(previous: pd.DataFrame | None) -> dict[tuple[int, int], dict]:
    if previous is None or len(previous) == 0:
        return {}
    table = normalize_status(previous)
    rows = table.astype(object).where(table.notna(), None).to_dict("records")
    return {(int(r["doc"]), int(r["index"])): r for r in rows}


def download_shard(
    refs: Iterable[ImageRef],
    *,
    data_dir: Path,
    shard: int,
    settings: DownloadSettings,
    previous: pd.DataFrame | None = None,
    targets: set[tuple[int, int]] | None = None,
    progress: Callable[[ProgressInfo], None] | None = None,
    progress_interval: float = 2.0,
    held: Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """Download the shard's images into ``data_dir/images/{shard}``; return its status table.

    Resumable: images already valid on disk are not fetched again (their row is carried over,
    or rebuilt from the file). ``previous`` defaults to the shard's status file, if any. With
    ``targets``, only those (doc, index) images are attempted (conditionally when we hold a valid
    copy with validators); every other image keeps its previous row. Raises CaBundleError at
    once when ``settings.ca_bundle`` cannot be used. ``held`` ({relative path: size}, a listing
    of the shard's stored objects) stands in for the disk when the data folder is an object
    store: an image whose previous row is ok with that path and size is held, not fetched.
    """
    tls = tls_context(settings.ca_bundle)
    _tune_malloc()
    run = _ShardRun(Path(data_dir), int(shard), settings, tls, progress, progress_interval)
    run.held = held
    if previous is None:
        previous = read_status(data_dir, shard)
    return run.execute(list(refs), _previous_rows(previous), targets)


class _ShardRun:
    """State of one download_shard call."""

    def __init__(self, data_dir, shard, settings, tls, progress, progress_interval) -> None:
        self.data_dir = data_dir
        self.shard = shard
        self.settings = settings
        self.tls = tls
        self.folder = data_dir / "images" / str(shard)
        self.progress = progress
        self.progress_interval = progress_interval
        self.held: Mapping[str, int] | None = None  # stored objects, when not on this disk
        self.rows: list[tuple | None] = []
        self._lock = threading.Lock()  # progress counters: decode threads and the loop
        self._outcomes: Counter[str] = Counter()
        self._done = 0
        self._bytes = 0
        self._total = 0
        self._started = time.monotonic()
        cpus = os.cpu_count() or 2
        self._decoders = max(1, settings.decode_workers or cpus)

    # -- planning ---------------------------------------------------------------------------

    def execute(self, refs, previous, targets) -> pd.DataFrame:
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.folder)
        self._total = len(refs)
        self.rows = [None] * len(refs)
        allocator = NameAllocator()
        jobs: list[ImageJob] = []
        for position, ref in enumerate(refs):
            name = allocator.allocate(ref.image_name, ref.url, ref.doc, ref.index)
            path = contained_path(self.folder, name)
            old = previous.get((ref.doc, ref.index))
            if old is not None and (old["url"] != ref.url or old["image_name"] != ref.image_name):
                old = None  # the shard changed under us: that row describes another image
            if targets is not None and (ref.doc, ref.index) not in targets and old is not None:
                self._finish(position, old)
                continue
            job = ImageJob(position, ref, name, path, f"images/{self.shard}/{name}", old)
            try:
                check_url(ref.url)
            except InvalidUrl as error:
                self._finish(position, failure_row(self.shard, job, "invalid_url", str(error)))
                remove_file(job)
                continue
            job.host = host_of(ref.url)
            jobs.append(job)
        self._report()
        with ThreadPoolExecutor(self._decoders, thread_name_prefix="mmc4-decode") as pool:
            network = self._check_local_copies(jobs, pool, refresh=targets is not None)
            if network:
                _run_coroutine(lambda: self._fetch_all(network, pool))
        self._report()
        return normalize_status(pd.DataFrame.from_records(self.rows, columns=ALL_COLUMNS))

    def _check_local_copies(self, jobs, pool, *, refresh: bool) -> list[ImageJob]:
        """Carry over valid files (full mode) or prepare conditional refreshes (targets mode)."""
        held = self.held
        on_disk = [
            job for job in jobs if job.path.is_file() or (held is not None and job.relpath in held)
        ]
        if not on_disk:
            return jobs

        def check(job: ImageJob) -> dict | None:
            if held is not None and job.relpath in held and not job.path.is_file():
                return held_copy(job, held[job.relpath])
            return check_local_copy(job, self.settings, self.shard)

        verdicts = dict(zip(map(id, on_disk), pool.map(check, on_disk), strict=True))
        remaining = []
        for job in jobs:
            row = verdicts.get(id(job))
            if row is None:
                remaining.append(job)
            elif not refresh:
                self._finish(job.position, row)
            else:
                job.have_copy = True
                job.previous = row
                job.conditional = bool(row.get("etag") or row.get("last_modified"))
                remaining.append(job)
        return remaining

    # -- fetching ---------------------------------------------------------------------------

    async def _fetch_all(self, jobs: list[ImageJob], pool: ThreadPoolExecutor) -> None:
        settings = self.settings
        loop = asyncio.get_running_loop()
        queue = HostQueue(settings.per_host)
        for job in jobs:
            queue.add(job)
        breaker = HostBreaker(settings.breaker_failures)
        meter = ByteMeter()
        wake = asyncio.Event()
        tasks: set[asyncio.Task] = set()
        fetching = 0
        decoding = 0  # bodies handed to the decoders and not done yet
        backlog = 8 * self._decoders  # enough to keep every decoder busy, no more
        failure: list[BaseException] = []

        def done(task: asyncio.Task) -> None:
            nonlocal fetching
            tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                failure.append(task.exception())
            wake.set()

        async def process(job: ImageJob, client: HttpClient) -> None:
            nonlocal fetching, decoding
            try:
                if job.deadline is None:
                    job.deadline = loop.time() + settings.total_deadline
                job.attempts += 1
                old = job.previous if job.conditional else None
                result = await client.attempt(
                    job.ref.url,
                    etag=(old or {}).get("etag"),
                    last_modified=(old or {}).get("last_modified"),
                    deadline=job.deadline,
                    meter=meter,
                    last_for_host=queue.waiting_for(job.host) == 0,
                )
            finally:
                fetching -= 1
                queue.release(job.host)
                wake.set()
            result.attempts = job.attempts
            if result.answered:
                breaker.record_answer(job.host)
            elif result.host_failure:
                breaker.record_failure(job.host, result.host_failure, result.outcome, result.error)
            time_left = job.deadline - loop.time()
            wait = retry_delay(
                settings, result, job.attempts, time_left, breaker.answered(job.host)
            )
            if wait is not None:
                job.last_result = result
                queue.requeue(job, loop.time() + wait)
                return
            if result.outcome is None:
                size = len(result.body or b"")
                with self._lock:
                    self._bytes += size
                decoding += 1
                try:
                    row = await loop.run_in_executor(
                        pool, store_body, job, result, settings, self.shard
                    )
                finally:
                    decoding -= 1
                    meter.release(size)
                    wake.set()
            else:
                row = store_outcome(job, result, self.shard)
            self._finish(job.position, row)

        next_report = loop.time() + self.progress_interval
        async with HttpClient(settings, self.tls) as client:
            try:
                while (queue.total_waiting or tasks) and not failure:
                    wake.clear()
                    queue.promote(loop.time())
                    # New requests start while the decoders have little waiting for them (when the
                    # CPU is the limit, more requests only make handshakes time out) and the
                    # bytes bound allows.
                    while (
                        fetching < settings.max_concurrency
                        and decoding < backlog
                        and (
                            fetching == 0
                            or meter.held + (fetching + 1) * meter.mean_body
                            <= settings.max_bytes_in_flight
                        )
                    ):
                        job = queue.take()
                        if job is None:
                            break
                        skipped = breaker.open_reason(job.host)
                        if skipped is not None:
                            queue.release(job.host)
                            outcome, reason = skipped
                            result = FetchResult(outcome, error=reason, attempts=job.attempts)
                            self._finish(job.position, store_outcome(job, result, self.shard))
                            continue
                        if job.last_result is not None and loop.time() >= job.deadline:
                            # Its deadline passed while it waited for a slot: the last try's
                            # outcome stands (a refusal stays a refusal, not a timeout).
                            queue.release(job.host)
                            self._finish(
                                job.position, store_outcome(job, job.last_result, self.shard)
                            )
                            continue
                        fetching += 1
                        task = asyncio.create_task(process(job, client))
                        tasks.add(task)
                        task.add_done_callback(done)
                    now = loop.time()
                    if now >= next_report:
                        next_report = now + self.progress_interval
                        self._report()
                    wake_at = next_report
                    retry_at = queue.next_retry_at()
                    if retry_at is not None:
                        wake_at = min(wake_at, retry_at)
                    try:
                        async with asyncio.timeout_at(wake_at):
                            await wake.wait()
                    except TimeoutError:
                        pass
            finally:
                for task in list(tasks):
                    task.cancel()
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
        if failure:
            raise failure[0]

    # -- accounting -------------------------------------------------------------------------

    def _finish(self, position: int, row: dict) -> None:
        # A tuple, not the dict: 25k long-lived dicts scattered among body buffers fragment the
        # heap; tuples are a third the size and live in Python's own small-object arenas.
        self.rows[position] = tuple(row.get(name) for name in ALL_COLUMNS)
        with self._lock:
            self._done += 1
            self._outcomes[row["outcome"]] += 1

    def _report(self) -> None:
        if self.progress is None:
            return
        with self._lock:
            elapsed = time.monotonic() - self._started
            info = ProgressInfo(
                done=self._done,
                total=self._total,
                outcomes=dict(self._outcomes),
                elapsed=elapsed,
                images_per_second=self._done / elapsed if elapsed > 0 else 0.0,
                bytes=self._bytes,
            )
        self.progress(info)


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (it halves the loop's own CPU per request), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _run_on_new_loop(make: Callable) -> None:
    # The objects alive before the run (a Dagster process holds millions) are moved out of the
    # collector's sight for its duration: full collections over them cost a tenth of the CPU.
    gc.freeze()
    try:
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            runner.run(make())
    finally:
        gc.unfreeze()


def _run_coroutine(make: Callable) -> None:
    """Run ``make()`` on a fresh event loop: here, or in a thread if this one already has one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        _run_on_new_loop(make)
        return
    errors: list[BaseException] = []

    def target() -> None:
        try:
            _run_on_new_loop(make)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller
            errors.append(error)

    thread = threading.Thread(target=target, name="mmc4-download-loop")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
