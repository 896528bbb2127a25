"""The fetch loop: start requests, hand bodies to the decoders, account for every image.

One event loop runs every request (hundreds in flight cost a coroutine and a socket each, so
latency is hidden by numbers, not threads); a small thread pool decodes and writes, since Pillow
releases the GIL. Each turn of the loop (``_Session``) asks its parts, one job each:

- ``admission``: which image starts next, under the site limits the run holds in the shared site
  ledger (through the gate), the bytes bound and the decoders' backlog; sites' pauses;
- ``origin_rules``: robots.txt first, and Crawl-delay turns, per origin;
- ``request``: one request's life (retry, store, or end), and what its answer says about its
  host (breaker) and site (throttles);
- ``process_tuning``: the allocator, TLS buffers and collector settings of a fetch process.

No pandas here: fetch worker processes import this module and nothing heavier.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..fetching.breaker import HostBreaker
from ..fetching.client import ByteMeter, FetchResult, HttpClient
from ..politeness.broker import local_link, open_broker
from ..politeness.gate import SiteGate
from ..politeness.robots import RobotsBook, RobotsEntry, origin_of
from ..politeness.sites import SiteBudgets, site_of
from ..settings import DownloadSettings, tls_context
from ..storing.store import ImageJob, store_outcome
from .admission import BACKLOG_PER_DECODER, Admission
from .origin_rules import FETCH_ROBOTS, GO, OriginRules
from .process_tuning import run_coroutine
from .request import InFlight, Requests
from .site_queue import SiteQueue


@dataclass
class ProgressInfo:
    """A progress snapshot for the callback."""

    done: int
    total: int
    outcomes: dict[str, int]
    elapsed: float
    images_per_second: float
    bytes: int


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
        self.decoders = max(1, settings.decode_workers or cpus)
        self.peak_site_requests: dict[str, int] = {}  # the most requests in flight per site
        self.robots_cache: dict[str, RobotsEntry] = {}  # fresh entries read before the run
        self.robots_fetched: list[RobotsEntry] = []  # entries fetched by this loop, to store
        self.politeness: Counter[str] = Counter()  # what politeness did (run metadata)

    def keep(self, position: int, row: dict) -> None:
        """Keep the finished row of the image at ``position``."""
        raise NotImplementedError

    # -- fetching ---------------------------------------------------------------------------

    def fetch_here(self, jobs: list[ImageJob], connect: Connect | None = None) -> None:
        """Fetch ``jobs`` on this process's own loop and decoders (a fetch worker's whole job).

        ``connect(deliver)`` links the loop to the run's site broker: it returns the function
        that sends the broker this loop's messages, and arranges for ``deliver`` to be called
        (from any thread) with the broker's answers. Without it, a broker of its own serves
        this loop (on ``settings.ledger_url``).
        """
        for job in jobs:
            job.site = job.site or site_of(job.host)
            job.origin = job.origin or origin_of(job.ref.url)
        with ThreadPoolExecutor(self.decoders, thread_name_prefix="mmc4-decode") as pool:
            if connect is not None:
                self._fetch_here(jobs, pool, connect)
                return
            with open_broker(self.settings) as broker:
                self._fetch_here(jobs, pool, local_link(broker))

    def _fetch_here(self, jobs: list[ImageJob], pool: ThreadPoolExecutor, connect) -> None:
        tls = tls_context(self.settings.ca_bundle)

        async def session() -> None:
            await _Session(self, pool, tls, connect).run(jobs)

        run_coroutine(session)

    # -- accounting -------------------------------------------------------------------------

    def finish(self, position: int, row: dict) -> None:
        """Keep an image's finished row and count it (from the loop or a decoder thread)."""
        self.keep(position, row)
        with self._lock:
            self._done += 1
            self._outcomes[row["outcome"]] += 1

    def count_bytes(self, size: int) -> None:
        with self._lock:
            self._bytes += size

    def report(self) -> None:
        """Send the progress callback a snapshot."""
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


Connect = Callable[[Callable[[list], None]], Callable[[list], None]]


class _Session:
    """One fetch of a list of images on a running loop: its parts, and the loop's turns."""

    def __init__(self, owner: FetchLoop, pool: ThreadPoolExecutor, tls, connect: Connect) -> None:
        self.owner = owner
        self.settings = settings = owner.settings
        self.pool = pool
        self.tls = tls
        self.loop = loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()
        # The broker answers from its own thread; its messages reach the gate on this loop.
        deliver = lambda messages: loop.call_soon_threadsafe(self.gate.receive, messages)  # noqa: E731
        self.gate = SiteGate(
            send=connect(deliver),
            budgets=SiteBudgets(
                settings.per_site,
                dict(settings.site_budgets),
                ceiling=settings.max_per_site,
                adaptive=settings.adaptive,
            ),
            backoff_base=settings.backoff_base,
            clock=loop.time,
            on_change=self.wake.set,
        )
        self.queue = SiteQueue(lambda site: self.gate.limit(site, loop.time()))
        self.admission = Admission(settings, self.gate, self.queue, self._end)
        self.rules = (
            OriginRules(RobotsBook(owner.robots_cache), self.queue, settings)
            if settings.respect_robots_txt
            else None
        )
        self.breaker = HostBreaker(settings.breaker_failures)
        self.meter = ByteMeter()
        self.counts = InFlight(owner.peak_site_requests, loop.time)
        self.tasks: set[asyncio.Task] = set()
        self.failure: list[BaseException] = []
        # Bodies waiting for a decoder before new requests wait too, but for the critical path.
        self.backlog = BACKLOG_PER_DECODER * owner.decoders
        self.requests: Requests | None = None

    async def run(self, jobs: list[ImageJob]) -> None:
        self.admission.add(jobs)
        next_report = self.loop.time() + self.owner.progress_interval
        async with HttpClient(self.settings, self.tls) as client:
            self.requests = Requests(
                owner=self.owner,
                settings=self.settings,
                client=client,
                pool=self.pool,
                gate=self.gate,
                breaker=self.breaker,
                admission=self.admission,
                rules=self.rules,
                meter=self.meter,
                counts=self.counts,
                wake=self.wake,
            )
            try:
                while (self.queue.total_waiting or self.tasks) and not self.failure:
                    self.wake.clear()
                    wake_at = self._turn(client)
                    now = self.loop.time()
                    if now >= next_report:
                        next_report = now + self.owner.progress_interval
                        self.owner.report()
                    try:
                        async with asyncio.timeout_at(min(wake_at, next_report)):
                            await self.wake.wait()
                    except TimeoutError:
                        pass
            finally:
                await self._close()
        if self.failure:
            raise self.failure[0]

    def _turn(self, client: HttpClient) -> float:
        """One turn: requeue changed sites, bring in new ones, start what may start, tell the
        gate; returns when the next turn is due if nothing wakes the loop before."""
        admission, gate = self.admission, self.gate
        now = self.loop.time()
        self.queue.promote(now)
        admission.apply_site_changes(now)
        admission.bring_in_sites(now)
        admission.prefetch_names(client.resolver)
        counts = self.counts
        while job := admission.next_job(counts.requests, counts.decoding, self.backlog, self.meter):
            self._start(job)
        busy = bool(counts.requests or counts.decoding)
        idle_until = admission.give_up_when_idle(self.loop.time(), busy)
        admission.update_wants()
        gate.flush()
        due = [
            self.queue.next_retry_at(),
            admission.next_pause_end(),
            gate.next_flush(),
            idle_until,
        ]
        return min((t for t in due if t is not None), default=float("inf"))

    async def _close(self) -> None:
        """End the requests still running, give back every connection, count what happened."""
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        gate, politeness = self.gate, self.owner.politeness
        for site in list(gate.wanted):
            gate.want(site, 0)
        gate.flush(force=True)
        politeness["request_seconds"] += round(self.counts.request_seconds())
        politeness["throttles"] += gate.throttles
        politeness["sites_paused"] += len(gate.paused_sites)
        if self.rules is not None:
            politeness.update(self.rules.counters)
            politeness["origins_with_crawl_delay"] += len(self.rules.crawl_delays)
            politeness["robots_txt_from_cache"] += self.rules.book.cache_hits
            self.owner.robots_fetched.extend(self.rules.book.fetched)
        if self.owner.peak_site_requests:
            most = max(self.owner.peak_site_requests.values())
            if most > politeness["most_requests_per_site"]:
                politeness["most_requests_per_site"] = most

    def _end(self, job: ImageJob, result: FetchResult) -> None:
        self.owner.finish(job.position, store_outcome(job, result, self.owner.shard))

    def _start(self, job: ImageJob) -> None:
        """The job has a slot of its site: end it, park it, or send its request."""
        site = job.site
        skipped = self.breaker.open_reason(job.host)
        if skipped is not None:
            outcome, reason = skipped
            self.admission.release(site)
            self._end(job, FetchResult(outcome, error=reason, attempts=job.attempts))
            return
        if job.last_result is not None and self.loop.time() >= job.deadline:
            # Its deadline passed while it waited for a slot: the last try's outcome stands (a
            # refusal stays a refusal, not a timeout).
            self.admission.release(site)
            self._end(job, job.last_result)
            return
        if self.rules is not None:
            admitted = self.rules.admit(job, self.loop.time())
            if admitted == FETCH_ROBOTS:  # this slot fetches robots.txt, the image waits
                task = self._launch(self.requests.robots(job.origin, site, job.host), site)
                self.rules.fetches[job.origin] = task
                return
            if admitted != GO:
                self.admission.release(site)
                if isinstance(admitted, FetchResult):
                    self._end(job, admitted)
                return
        self._launch(self.requests.image(job), site)

    def _launch(self, coroutine, site: str) -> asyncio.Task:
        self.counts.start(site)
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failure.append(task.exception())
        self.wake.set()
