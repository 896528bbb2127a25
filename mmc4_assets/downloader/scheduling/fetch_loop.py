"""The fetch loop: start requests, hand bodies to the decoders, account for every image.

One event loop runs every request (hundreds in flight cost a coroutine and a socket each, so
latency is hidden by numbers, not threads); a small thread pool decodes and writes, since Pillow
releases the GIL. Memory is bounded by body bytes: a new request starts only while the bytes
being received or waiting for a decoder, plus a mean body for each request in flight, stay
within ``max_bytes_in_flight`` (one request may run when nothing else is held). A host queue
keeps every host within ``per_host`` requests, busiest hosts first; a retry waits in a timed
queue rather than in a slot; a per-host breaker ends the images of hosts that refuse or never
answer.

When the decoders fall behind (the CPU is the limit), new requests wait, except for a host whose
backlog is the run's critical path: a host can go no faster than ``per_host`` at a time, so one
with many images left must keep its slots busy or the run ends waiting for it alone.

No pandas here: fetch worker processes import this module and nothing heavier.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import gc
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..fetching.breaker import HostBreaker
from ..fetching.client import ByteMeter, FetchResult, HttpClient, retry_delay
from ..settings import DownloadSettings, tls_context
from ..storing.store import ImageJob, store_body, store_outcome
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
# asyncio gives every TLS connection a read buffer of this size (256 KB by default, allocated
# and zeroed whether used or not): 64 connections held 16 MB. TLS records are 16 KB at most.
_TLS_READ_BUFFER = 32 * 1024
_memory_tuned = False


def tune_memory() -> None:
    """Make this process hold less memory per body and per connection (Linux glibc).

    Threads allocating and freeing bodies of a few hundred KB make glibc grow one arena per
    thread and raise its mmap threshold, so freed memory is kept, not returned. A fixed 64 KB
    mmap threshold (bodies and pixels go straight back to the OS) and four arenas keep it flat.
    asyncio's per-connection TLS read buffer shrinks from 256 KB to 32 KB.
    """
    global _memory_tuned
    if _memory_tuned:
        return
    _memory_tuned = True
    asyncio.sslproto.SSLProtocol.max_size = _TLS_READ_BUFFER
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_ARENA_MAX, 4)
        libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 1024 * 1024)
    except (OSError, AttributeError):
        pass


# Bodies waiting for each decoder before new requests wait (a few seconds of its work).
_BACKLOG_PER_DECODER = 16


class FetchLoop:
    """Fetch images on this process's loop and decoders; subclasses keep the finished rows."""

    def __init__(
        self,
        shard: int,
        settings: DownloadSettings,
        progress: Callable[[ProgressInfo], None] | None = None,
        progress_interval: float = 2.0,
    ) -> None:
        self.shard = shard
        self.settings = settings
        self.progress = progress
        self.progress_interval = progress_interval
        self._lock = threading.Lock()  # progress counters: decode threads and the loop
        self._outcomes: Counter[str] = Counter()
        self._done = 0
        self._bytes = 0
        self._total = 0
        self._started = time.monotonic()
        cpus = os.cpu_count() or 2
        self._decoders = max(1, settings.decode_workers or cpus)
        self.peak_held_bytes = 0  # the most body bytes held at once (max_bytes_in_flight's test)

    def keep(self, position: int, row: dict) -> None:
        """Keep the finished row of the image at ``position``."""
        raise NotImplementedError

    # -- fetching ---------------------------------------------------------------------------

    def fetch_here(self, jobs: list[ImageJob]) -> None:
        """Fetch ``jobs`` on this process's own loop and decoders (a fetch worker's whole job)."""
        with ThreadPoolExecutor(self._decoders, thread_name_prefix="mmc4-decode") as pool:
            self._fetch_here(jobs, pool)

    def _fetch_here(self, jobs: list[ImageJob], pool: ThreadPoolExecutor) -> None:
        tls = tls_context(self.settings.ca_bundle)
        run_coroutine(lambda: self._fetch_all(jobs, pool, tls))

    async def _fetch_all(self, jobs: list[ImageJob], pool: ThreadPoolExecutor, tls) -> None:
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
        # Bodies waiting for a decoder before new requests wait too, but for the critical path.
        backlog = _BACKLOG_PER_DECODER * self._decoders
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
        async with HttpClient(settings, tls) as client:
            try:
                while (queue.total_waiting or tasks) and not failure:
                    wake.clear()
                    queue.promote(loop.time())
                    # New requests start while the bytes bound allows and the decoders have little
                    # waiting for them (when the CPU is the limit, more requests only make
                    # handshakes time out), or for the critical path.
                    while fetching < settings.max_concurrency and (
                        (fetching == 0 and meter.held == 0)  # a body above the bound still runs
                        or meter.held + (fetching + 1) * meter.mean_body
                        <= settings.max_bytes_in_flight
                    ):
                        if decoding < backlog:
                            job = queue.take()
                        else:
                            job = queue.take(critical_backlog(settings, queue.total_waiting))
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
                self.peak_held_bytes = meter.peak
        if failure:
            raise failure[0]

    # -- accounting -------------------------------------------------------------------------

    def _finish(self, position: int, row: dict) -> None:
        self.keep(position, row)
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


def critical_backlog(settings: DownloadSettings, total_waiting: int) -> int:
    """Images waiting on one host that make it the critical path while the decoders are behind.

    A host holding more than ``per_host / max_concurrency`` of the remaining images would take
    longer at ``per_host`` at a time than the rest at full concurrency; never fewer than two
    rounds of its slots, so the hosts of a run's last few images are not all critical.
    """
    share = total_waiting * settings.per_host // max(1, settings.max_concurrency)
    return max(2 * settings.per_host, share)


def _run_on_new_loop(make: Callable) -> None:
    # The objects alive before the run (a Dagster process holds millions) are moved out of the
    # collector's sight for its duration: full collections over them cost a tenth of the CPU.
    gc.freeze()
    try:
        with asyncio.Runner() as runner:
            runner.run(make())
    finally:
        gc.unfreeze()


def run_coroutine(make: Callable) -> None:
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
