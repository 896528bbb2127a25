"""The fetch loop: start requests, hand bodies to the decoders, account for every image.

One event loop runs every request (hundreds in flight cost a coroutine and a socket each, so
latency is hidden by numbers, not threads); a small thread pool decodes and writes, since Pillow
releases the GIL. Memory is bounded by body bytes: a new request starts only while the bytes
being received or waiting for a decoder, plus a mean body for each request in flight, stay
within ``max_bytes_in_flight`` (one request may run when nothing else is held). A site queue
keeps every site (a registrable domain) within the slots the run holds in the shared site ledger,
busiest sites first, and out of a site while it is paused; a retry waits in a timed queue rather
than in a slot; a per-host breaker ends the images of hosts that refuse or never answer. An
origin's robots.txt is fetched (in a slot of its site) before any of its images is requested.

When the decoders fall behind (the CPU is the limit), new requests wait, except for a site whose
backlog is the run's critical path: a site can go no faster than its budget allows, so one with
many images left must keep its slots busy or the run ends waiting for it alone.

No pandas here: fetch worker processes import this module and nothing heavier.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import gc
import heapq
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..fetching.breaker import HostBreaker
from ..fetching.client import THROTTLE_STATUSES, ByteMeter, FetchResult, HttpClient, retry_delay
from ..politeness.broker import local_link, open_broker
from ..politeness.gate import SiteGate
from ..politeness.robots import (
    PRODUCT_TOKEN,
    RobotsBook,
    RobotsEntry,
    RobotsVerdict,
    origin_of,
    robots_url,
)
from ..politeness.sites import SiteBudgets, site_of
from ..settings import DownloadSettings, tls_context
from ..storing.store import ImageJob, store_body, store_outcome
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
        with ThreadPoolExecutor(self._decoders, thread_name_prefix="mmc4-decode") as pool:
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


Connect = Callable[[Callable[[list], None]], Callable[[list], None]]


class _Session:
    """One fetch of a list of images on a running loop: the state the loop's turns share."""

    def __init__(self, owner: FetchLoop, pool: ThreadPoolExecutor, tls, connect: Connect) -> None:
        self.owner = owner
        self.settings = settings = owner.settings
        self.pool = pool
        self.tls = tls
        self.loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()
        loop = self.loop
        # The broker answers from its own thread; its messages reach the gate on this loop.
        deliver = lambda messages: loop.call_soon_threadsafe(self.gate.receive, messages)  # noqa: E731
        self.gate = SiteGate(
            send=connect(deliver),
            budgets=SiteBudgets(settings.per_site, dict(settings.site_budgets)),
            backoff_base=settings.backoff_base,
            clock=loop.time,
            on_change=self.wake.set,
        )
        self.queue = SiteQueue(lambda site: self.gate.limit(site, self.loop.time()))
        self.breaker = HostBreaker(settings.breaker_failures)
        self.meter = ByteMeter()
        self.robots = RobotsBook(owner.robots_cache) if settings.respect_robots_txt else None
        self.robots_tasks: dict[str, asyncio.Task] = {}
        self.crawl_delays: dict[str, float] = {}  # origin -> its robots.txt's Crawl-delay for us
        self.crawl_next: dict[str, float] = {}  # origin -> when its next request may start
        self.parked: dict[str, list[ImageJob]] = {}
        self.pause_ends: list[tuple[float, str]] = []
        self.in_flight: Counter[str] = Counter()  # requests per site, robots.txt included
        self.touched: set[str] = set()  # sites whose demand changed this turn
        self.tasks: set[asyncio.Task] = set()
        self.failure: list[BaseException] = []
        self.fetching = 0
        self.decoding = 0  # bodies handed to the decoders and not done yet
        # Bodies waiting for a decoder before new requests wait too, but for the critical path.
        self.backlog = _BACKLOG_PER_DECODER * owner._decoders
        self.client: HttpClient | None = None
        self.prefetched = 0  # sites (in the order they come into play) whose names are asked
        self.idle_since: float | None = None  # nothing in flight since, images still waiting

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, jobs: list[ImageJob]) -> None:
        loop, gate, queue = self.loop, self.gate, self.queue
        for job in jobs:
            queue.add(job)
        order = queue.sites_by_backlog()
        next_site = 0
        next_report = loop.time() + self.owner.progress_interval
        async with HttpClient(self.settings, self.tls) as client:
            self.client = client
            try:
                while (queue.total_waiting or self.tasks) and not self.failure:
                    self.wake.clear()
                    now = loop.time()
                    queue.promote(now)
                    self._apply_site_changes(now)
                    next_site = self._bring_in_sites(order, next_site, now)
                    self._prefetch_names(order, next_site)
                    self._start_requests()
                    idle_until = self._give_up_when_idle(loop.time())
                    self._update_wants()
                    gate.flush()
                    now = loop.time()
                    if now >= next_report:
                        next_report = now + self.owner.progress_interval
                        self.owner._report()
                    wake_at = next_report
                    retry_at = queue.next_retry_at()
                    if retry_at is not None:
                        wake_at = min(wake_at, retry_at)
                    if self.pause_ends:
                        wake_at = min(wake_at, self.pause_ends[0][0])
                    flush_at = gate.next_flush()
                    if flush_at is not None:
                        wake_at = min(wake_at, flush_at)
                    if idle_until is not None:
                        wake_at = min(wake_at, idle_until)
                    try:
                        async with asyncio.timeout_at(wake_at):
                            await self.wake.wait()
                    except TimeoutError:
                        pass
            finally:
                for task in list(self.tasks):
                    task.cancel()
                if self.tasks:
                    await asyncio.gather(*self.tasks, return_exceptions=True)
                for site in list(gate.wanted):
                    gate.want(site, 0)
                gate.flush(force=True)
                self.owner.peak_held_bytes = self.meter.peak
                self.owner.politeness["throttles"] += gate.throttles
                self.owner.politeness["sites_paused"] += len(gate.paused_sites)
                self.owner.politeness["origins_with_crawl_delay"] += len(self.crawl_delays)
                if self.robots is not None:
                    self.owner.politeness["robots_txt_from_cache"] += self.robots.cache_hits
                    self.owner.robots_fetched.extend(self.robots.fetched)
                if self.owner.peak_site_requests:
                    most = max(self.owner.peak_site_requests.values())
                    if most > self.owner.politeness["most_requests_per_site"]:
                        self.owner.politeness["most_requests_per_site"] = most
        if self.failure:
            raise self.failure[0]

    def _give_up_when_idle(self, now: float) -> float | None:
        """When nothing has been in flight for total_deadline while images still wait (every
        site left is held by other runs, paused, or its ledger out of reach), end those images
        ``rate_limited`` for a later run rather than hold this one. Returns when to look again.
        """
        if self.fetching or self.decoding or not self.queue.total_waiting:
            self.idle_since = None
            return None
        if self.idle_since is None:
            self.idle_since = now
        limit = self.settings.total_deadline
        if now - self.idle_since < limit:
            return self.idle_since + limit
        gate = self.gate
        for site in self.queue.waiting_sites():
            if gate.pause_end(site) > now:
                why = "site paused after throttling: not fetched this run"
            elif gate.held.get(site, 0) == 0:
                why = f"no connection of its budget free in {limit:g}s (other runs hold them)"
            else:
                why = f"not started in {limit:g}s"
            for job in self.queue.drain(site, lambda job: False):
                self._end_paused(job, why)
            self.touched.add(site)
        self.idle_since = None
        return None

    def _apply_site_changes(self, now: float) -> None:
        """Sites whose connections, share or pause changed: requeue them, recompute what they
        want, end what cannot wait a pause."""
        gate, queue = self.gate, self.queue
        while self.pause_ends and self.pause_ends[0][0] <= now:
            gate.changed.add(heapq.heappop(self.pause_ends)[1])
        if not gate.changed:
            return
        changed, gate.changed = gate.changed, set()
        self.touched.update(changed)
        # An image waits if the pause ends within its deadline (one not started yet: within
        # total_deadline from now).
        horizon = now + self.settings.total_deadline
        for site in changed:
            queue.refresh(site)
            end = gate.pause_end(site)
            if end <= now:
                continue
            heapq.heappush(self.pause_ends, (end, site))

            def can_wait(job: ImageJob, end=end) -> bool:
                return (job.deadline if job.deadline is not None else horizon) > end

            why = f"site paused for {end - now:.0f}s after throttling: not fetched"
            for job in queue.drain(site, can_wait):
                self._end_paused(job, why)

    def _end_paused(self, job: ImageJob, why: str) -> None:
        if job.last_result is not None:  # its last try's outcome stands (a 503 stays a 503)
            result = job.last_result
        else:
            result = FetchResult("rate_limited", error=f"{job.site}: {why}", attempts=job.attempts)
        self.owner._finish(job.position, store_outcome(job, result, self.owner.shard))

    def _bring_in_sites(self, order: list[str], next_site: int, now: float) -> int:
        """Ask for the slots of the next sites (busiest first) while the held and asked-for
        slots of sites that can run fall short of the concurrency, with a margin."""
        gate, queue = self.gate, self.queue
        target = self.settings.max_concurrency + max(8, self.settings.max_concurrency // 4)
        pledged = sum(
            count
            for site, count in gate.wanted.items()
            if site not in gate.starved and gate.pause_end(site) <= now
        )
        while pledged < target and next_site < len(order):
            site = order[next_site]
            next_site += 1
            demand = queue.demand(site)
            if demand:
                gate.want(site, demand)
                pledged += gate.wanted.get(site, 0)
        return next_site

    def _prefetch_names(self, order: list[str], next_site: int) -> None:
        """Look up the names of the sites in play and of the next ones in line, before their
        first request needs them (lookups are cheap and run concurrently; waiting is not)."""
        upto = min(len(order), next_site + self.settings.max_concurrency)
        resolver = self.client.resolver
        while self.prefetched < upto:
            for host, port in self.queue.names_of(order[self.prefetched]):
                resolver.prefetch(host, port)
            self.prefetched += 1

    def _update_wants(self) -> None:
        gate, queue = self.gate, self.queue
        for site in self.touched:
            if gate.in_play(site):
                demand = queue.demand(site)
                gate.want(site, demand, queue.active(site))
        self.touched.clear()

    def _free(self, site: str) -> None:
        self.queue.release(site)
        self.in_flight[site] -= 1
        self.touched.add(site)

    def _start_requests(self) -> None:
        """Start requests while the bytes bound allows and the decoders have little waiting
        for them (when the CPU is the limit, more requests only make handshakes time out), or
        for the critical path."""
        settings, queue, meter = self.settings, self.queue, self.meter
        while self.fetching < settings.max_concurrency and (
            (self.fetching == 0 and meter.held == 0)  # a body above the bound still runs
            or meter.held + (self.fetching + 1) * meter.mean_body <= settings.max_bytes_in_flight
        ):
            if self.decoding < self.backlog:
                job = queue.take()
            else:
                job = queue.take(critical_backlog(settings, queue.total_waiting))
            if job is None:
                return
            self._start(job)

    def _start(self, job: ImageJob) -> None:
        """The job has a slot of its site: end it, park it, or send its request."""
        queue, site = self.queue, job.site
        skipped = self.breaker.open_reason(job.host)
        if skipped is not None:
            queue.release(site)
            self.touched.add(site)
            outcome, reason = skipped
            result = FetchResult(outcome, error=reason, attempts=job.attempts)
            self.owner._finish(job.position, store_outcome(job, result, self.owner.shard))
            return
        if job.last_result is not None and self.loop.time() >= job.deadline:
            # Its deadline passed while it waited for a slot: the last try's outcome stands (a
            # refusal stays a refusal, not a timeout).
            queue.release(site)
            self.touched.add(site)
            self.owner._finish(job.position, store_outcome(job, job.last_result, self.owner.shard))
            return
        if self.robots is not None:
            verdict = self.robots.verdict(job.origin)
            if verdict is None:  # robots.txt first: this slot fetches it, the image waits
                queue.park(job)
                self.parked.setdefault(job.origin, []).append(job)
                if job.origin in self.robots_tasks:
                    queue.release(site)
                    self.touched.add(site)
                else:
                    task = self._launch(self._fetch_robots(job.origin, site, job.host), site)
                    self.robots_tasks[job.origin] = task
                return
            refusal = _refusal(verdict, job.ref.url, job.attempts)
            if refusal is not None:
                queue.release(site)
                self.touched.add(site)
                self.owner._finish(job.position, store_outcome(job, refusal, self.owner.shard))
                return
            if job.origin in self.crawl_delays and not self._crawl_turn(job):
                return
        self._launch(self._process(job), site)

    def _crawl_turn(self, job: ImageJob) -> bool:
        """Under its origin's Crawl-delay, may ``job`` start now? Each request of the origin is
        given a turn, one per delay; a job whose turn is later waits for it (holding no
        connection), or, when the turn is past its deadline (one not started yet: past
        total_deadline from now), ends ``rate_limited`` for a later run."""
        if job.turn is not None:  # it waited for its turn, which has come
            job.turn = None
            return True
        now = self.loop.time()
        delay = self.crawl_delays[job.origin]
        turn = max(now, self.crawl_next.get(job.origin, now))
        if turn <= now:
            self.crawl_next[job.origin] = now + delay
            return True
        self.queue.release(job.site)
        self.touched.add(job.site)
        limit = job.deadline if job.deadline is not None else now + self.settings.total_deadline
        if turn >= limit:
            self._end_paused(job, f"robots.txt asks {delay:g}s between requests: not fetched")
            return False
        self.crawl_next[job.origin] = turn + delay
        job.turn = turn
        self.queue.requeue(job, turn)
        return False

    def _launch(self, coroutine, site: str) -> asyncio.Task:
        self.fetching += 1
        self.in_flight[site] += 1
        peak = self.owner.peak_site_requests
        if self.in_flight[site] > peak.get(site, 0):
            peak[site] = self.in_flight[site]
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failure.append(task.exception())
        self.wake.set()

    # -- one request ------------------------------------------------------------------------

    async def _process(self, job: ImageJob) -> None:
        settings, loop, queue = self.settings, self.loop, self.queue
        started = loop.time()
        try:
            if job.deadline is None:
                job.deadline = started + settings.total_deadline
            job.attempts += 1
            old = job.previous if job.conditional else None
            result = await self.client.attempt(
                job.ref.url,
                etag=(old or {}).get("etag"),
                last_modified=(old or {}).get("last_modified"),
                deadline=job.deadline,
                meter=self.meter,
                last_for_host=queue.waiting_for(job.site) == 0,
                allow_hop=self._allow_hop if self.robots is not None else None,
            )
        finally:
            self.fetching -= 1
            self._free(job.site)
            self.wake.set()
        result.attempts = job.attempts
        self._heard_from(job.host, job.site, result, started)
        time_left = job.deadline - loop.time()
        wait = retry_delay(
            settings, result, job.attempts, time_left, self.breaker.answered(job.host)
        )
        if wait is not None:
            job.last_result = result
            queue.requeue(job, loop.time() + wait)
            return
        if result.outcome is None:
            size = len(result.body or b"")
            with self.owner._lock:
                self.owner._bytes += size
            self.decoding += 1
            try:
                row = await loop.run_in_executor(
                    self.pool, store_body, job, result, settings, self.owner.shard
                )
            finally:
                self.decoding -= 1
                self.meter.release(size)
                self.wake.set()
        else:
            row = store_outcome(job, result, self.owner.shard)
        self.owner._finish(job.position, row)

    def _heard_from(self, host: str, site: str, result: FetchResult, started: float) -> None:
        """What one answer says about its host (breaker) and its site (throttled, or fine)."""
        if result.answered:
            self.breaker.record_answer(host)
        elif result.host_failure:
            self.breaker.record_failure(host, result.host_failure, result.outcome, result.error)
        if result.http_status in THROTTLE_STATUSES:
            self.gate.throttled(site, result.retry_after, self.loop.time() - started)
        elif result.outcome is None:
            self.gate.succeeded(site)

    # -- robots.txt -------------------------------------------------------------------------

    async def _fetch_robots(self, origin: str, site: str, host: str, slot: bool = True):
        """Fetch ``origin``'s robots.txt (in a slot of its site, unless for a redirect), then
        let the images that waited for it go."""
        settings, loop = self.settings, self.loop
        deadline = loop.time() + settings.total_deadline
        attempt = 0
        try:
            while True:  # a failed connection is retried like an image's (in place: rare)
                attempt += 1
                started = loop.time()
                result = await self.client.fetch_robots(robots_url(origin), deadline=deadline)
                self._heard_from(host, site, result, started)  # a 429/503 pauses the site
                if result.http_status is not None:
                    break  # an answer, even 5xx or 429, is the verdict for this run (RFC 9309)
                answered = self.breaker.answered(host)
                wait = retry_delay(settings, result, attempt, deadline - loop.time(), answered)
                if wait is None or self.breaker.open_reason(host) is not None:
                    break
                await asyncio.sleep(wait)
        finally:
            if slot:
                self.fetching -= 1
                self._free(site)
            self.robots_tasks.pop(origin, None)
        self.owner.politeness["robots_txt_fetched"] += 1
        verdict = self.robots.record(origin, result)
        if verdict.failure is not None:
            self.owner.politeness["robots_txt_unavailable"] += 1
        elif verdict.crawl_delay:
            self.crawl_delays[origin] = verdict.crawl_delay
        for job in self.parked.pop(origin, []):
            self.queue.unpark(job)
        self.touched.add(site)
        self.gate.changed.add(site)  # a pause may have begun while they waited
        self.wake.set()

    async def _allow_hop(self, url: str) -> FetchResult | None:
        """A redirect to another origin: that origin's robots.txt decides too."""
        origin = origin_of(url)
        verdict = self.robots.verdict(origin)
        if verdict is None:
            task = self.robots_tasks.get(origin)
            if task is None:
                host = (urlsplit(url).hostname or "").lower()
                task = asyncio.ensure_future(
                    self._fetch_robots(origin, site_of(host), host, slot=False)
                )
                self.robots_tasks[origin] = task
            await asyncio.shield(task)
            verdict = self.robots.verdict(origin)
        return _refusal(verdict, url, 0)


def _refusal(verdict: RobotsVerdict | None, url: str, attempts: int) -> FetchResult | None:
    """The result ending an image that robots.txt keeps us from requesting, or None."""
    if verdict is None:
        return None
    if verdict.failure is not None:
        failure = verdict.failure
        return FetchResult(
            failure.outcome, failure.http_status, failure.error, attempts=attempts, final=True
        )
    if not verdict.allows(url):
        return FetchResult(
            "robots_disallowed",
            error=f"robots.txt disallows it for {PRODUCT_TOKEN}",
            attempts=attempts,
            final=True,
        )
    return None


def critical_backlog(settings: DownloadSettings, total_waiting: int) -> int:
    """Images waiting on one site that make it the critical path while the decoders are behind.

    A site holding more than ``per_site / max_concurrency`` of the remaining images would take
    longer at ``per_site`` at a time than the rest at full concurrency; never fewer than two
    rounds of its slots, so the sites of a run's last few images are not all critical.
    """
    share = total_waiting * settings.per_site // max(1, settings.max_concurrency)
    return max(2 * settings.per_site, share)


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
