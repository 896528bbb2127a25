"""One request's life: send it, learn from its answer, retry it or hand its body to a decoder.

An image's request runs under its deadline (set at its first try); its answer tells the host's
breaker whether the host answers and the site's gate whether it throttles; a failure worth
retrying waits in the site queue's timed queue (holding no connection), anything else is stored
(a body by a decoder thread, an outcome at once). robots.txt requests are requests too: in a slot
of their site, their 429/503 pausing it like an image's.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from ..fetching.breaker import HostBreaker
from ..fetching.client import THROTTLE_STATUSES, ByteMeter, FetchResult, HttpClient, retry_delay
from ..politeness.gate import SiteGate
from ..politeness.robots import origin_of, robots_url
from ..politeness.sites import site_of
from ..settings import DownloadSettings
from ..storing.store import ImageJob, store_body, store_outcome
from .admission import Admission
from .origin_rules import OriginRules


class InFlight:
    """Requests and decodes under way, the most requests each site had at once, and the time
    requests were in flight, summed (``request_seconds``: over the wall time, the mean requests
    in flight, which says whether ``max_concurrency`` or the sites bound the run)."""

    def __init__(self, peaks: dict[str, int], clock: Callable[[], float]) -> None:
        self.requests = 0
        self.decoding = 0  # bodies handed to the decoders and not done yet
        self.per_site: Counter[str] = Counter()  # robots.txt requests included
        self.peaks = peaks
        self.clock = clock
        self._seconds = 0.0  # request-seconds up to _since
        self._since = clock()

    def _integrate(self) -> None:
        now = self.clock()
        self._seconds += self.requests * (now - self._since)
        self._since = now

    def start(self, site: str) -> None:
        self._integrate()
        self.requests += 1
        self.per_site[site] += 1
        if self.per_site[site] > self.peaks.get(site, 0):
            self.peaks[site] = self.per_site[site]

    def end(self, site: str) -> None:
        self._integrate()
        self.requests -= 1
        self.per_site[site] -= 1

    def request_seconds(self) -> float:
        """The time requests were in flight so far, summed."""
        self._integrate()
        return self._seconds


class Requests:
    """The requests of one fetch session; ``owner`` (the FetchLoop) keeps the finished rows."""

    def __init__(
        self,
        *,
        owner,
        settings: DownloadSettings,
        client: HttpClient,
        pool: ThreadPoolExecutor,
        gate: SiteGate,
        breaker: HostBreaker,
        admission: Admission,
        rules: OriginRules | None,
        meter: ByteMeter,
        counts: InFlight,
        wake: asyncio.Event,
    ) -> None:
        self.owner = owner
        self.settings = settings
        self.client = client
        self.pool = pool
        self.gate = gate
        self.breaker = breaker
        self.admission = admission
        self.rules = rules
        self.meter = meter
        self.counts = counts
        self.wake = wake
        self.loop = asyncio.get_running_loop()

    def _ended(self, site: str) -> None:
        """A request that held a slot of ``site`` is over."""
        self.counts.end(site)
        self.admission.release(site)
        self.wake.set()

    async def image(self, job: ImageJob) -> None:
        """Request ``job``'s image (its slot taken), then retry, store or end it."""
        settings, loop, queue = self.settings, self.loop, self.admission.queue
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
                allow_hop=self.allow_hop if self.rules is not None else None,
            )
        finally:
            self._ended(job.site)
        result.attempts = job.attempts
        self.heard_from(job.host, job.site, result, started)
        time_left = job.deadline - loop.time()
        wait = retry_delay(
            settings, result, job.attempts, time_left, self.breaker.answered(job.host)
        )
        if wait is not None:
            job.last_result = result
            queue.requeue(job, loop.time() + wait)
            return
        if result.outcome is None:
            row = await self._decode(job, result)
        else:
            row = store_outcome(job, result, self.owner.shard)
        self.owner.finish(job.position, row)

    async def _decode(self, job: ImageJob, result: FetchResult) -> dict:
        size = len(result.body or b"")
        self.owner.count_bytes(size)
        self.counts.decoding += 1
        try:
            return await self.loop.run_in_executor(
                self.pool, store_body, job, result, self.settings, self.owner.shard
            )
        finally:
            self.counts.decoding -= 1
            self.meter.release(size)
            self.wake.set()

    def heard_from(self, host: str, site: str, result: FetchResult, started: float) -> None:
        """What one answer says about its host (breaker) and its site (throttled, or fine)."""
        if result.answered:
            self.breaker.record_answer(host)
        elif result.host_failure:
            self.breaker.record_failure(host, result.host_failure, result.outcome, result.error)
        if result.http_status in THROTTLE_STATUSES:
            self.gate.throttled(site, result.retry_after, self.loop.time() - started)
            return
        if result.outcome is None:
            self.gate.succeeded(site)
        # A retry's error is the same broken URL again, not more evidence about the site.
        self.gate.observe(site, result.head_seconds, _site_error(result) and result.attempts <= 1)

    async def robots(self, origin: str, site: str, host: str, slot: bool = True) -> None:
        """Fetch ``origin``'s robots.txt (in a slot of its site, unless for a redirect), then
        let the images that waited for it go."""
        settings, loop, rules = self.settings, self.loop, self.rules
        deadline = loop.time() + settings.total_deadline
        attempt = 0
        try:
            while True:  # a failed connection is retried like an image's (in place: rare)
                attempt += 1
                started = loop.time()
                result = await self.client.fetch_robots(robots_url(origin), deadline=deadline)
                self.heard_from(host, site, result, started)  # a 429/503 pauses the site
                if result.http_status is not None:
                    break  # an answer, even 5xx or 429, is the verdict for this run (RFC 9309)
                answered = self.breaker.answered(host)
                wait = retry_delay(settings, result, attempt, deadline - loop.time(), answered)
                if wait is None or self.breaker.open_reason(host) is not None:
                    break
                await asyncio.sleep(wait)
        finally:
            if slot:
                self._ended(site)
            rules.fetches.pop(origin, None)
        for job in rules.record(origin, result):
            self.admission.queue.unpark(job)
        self.admission.touched.add(site)
        self.gate.changed.add(site)  # a pause may have begun while they waited
        self.wake.set()

    async def allow_hop(self, url: str) -> FetchResult | None:
        """A redirect to another origin: that origin's robots.txt decides too."""
        rules = self.rules
        origin = origin_of(url)
        if rules.book.verdict(origin) is None:
            task = rules.fetches.get(origin)
            if task is None:
                host = (urlsplit(url).hostname or "").lower()
                task = asyncio.ensure_future(self.robots(origin, site_of(host), host, slot=False))
                rules.fetches[origin] = task
            await asyncio.shield(task)
        return rules.hop_refusal(url, origin)


def _site_error(result: FetchResult) -> bool:
    """An answer that says the site is in trouble: a 5xx (not a throttle), a timeout, or a
    connection that failed for a reason that may pass (not a name or certificate error)."""
    if result.http_status is not None:
        return result.http_status >= 500
    return result.outcome == "timeout" or (
        result.outcome == "connection_error" and not result.final
    )
