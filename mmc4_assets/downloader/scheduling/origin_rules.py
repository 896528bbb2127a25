"""What an origin's robots.txt allows: whether an image may be requested, and when.

Before the first request to an origin its robots.txt is fetched (in a slot of its site, by the
request that needed it; the images that arrive meanwhile are parked until it is known). A
disallowed image, or one of an origin whose robots.txt failed, ends without a request. Under a
Crawl-delay each request of the origin gets a turn, one per delay; an image whose turn is later
waits for it holding no connection, or ends ``rate_limited`` when the turn is past its deadline.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from ..fetching.client import FetchResult
from ..politeness.robots import PRODUCT_TOKEN, RobotsBook, RobotsVerdict
from ..settings import DownloadSettings
from ..storing.store import ImageJob
from .admission import unfetched
from .site_queue import SiteQueue

GO = "go"  # request the image now
FETCH_ROBOTS = "fetch_robots"  # the image is parked: this slot fetches its origin's robots.txt
WAIT = "wait"  # the image is parked or waits for its turn: its slot goes back


class OriginRules:
    """The run's robots.txt verdicts and Crawl-delay turns, per origin."""

    def __init__(self, book: RobotsBook, queue: SiteQueue, settings: DownloadSettings) -> None:
        self.book = book
        self.queue = queue
        self.settings = settings
        self.fetches: dict[str, asyncio.Future] = {}  # origin -> its robots.txt fetch
        self.crawl_delays: dict[str, float] = {}  # origin -> its Crawl-delay for us
        self.crawl_next: dict[str, float] = {}  # origin -> when its next request may start
        self.parked: dict[str, list[ImageJob]] = {}  # origin -> images waiting for robots.txt
        self.counters: Counter[str] = Counter()

    def admit(self, job: ImageJob, now: float) -> str | FetchResult:
        """GO, FETCH_ROBOTS, WAIT, or the result that ends ``job`` without a request."""
        verdict = self.book.verdict(job.origin)
        if verdict is None:
            self.queue.park(job)
            self.parked.setdefault(job.origin, []).append(job)
            return WAIT if job.origin in self.fetches else FETCH_ROBOTS
        ended = refusal(verdict, job.ref.url, job.attempts)
        if ended is not None:
            return ended
        if job.origin in self.crawl_delays:
            return self._crawl_turn(job, now)
        return GO

    def _crawl_turn(self, job: ImageJob, now: float) -> str | FetchResult:
        if job.turn is not None:  # it waited for its turn, which has come
            job.turn = None
            return GO
        delay = self.crawl_delays[job.origin]
        turn = max(now, self.crawl_next.get(job.origin, now))
        if turn <= now:
            self.crawl_next[job.origin] = now + delay
            return GO
        limit = job.deadline if job.deadline is not None else now + self.settings.total_deadline
        if turn >= limit:
            return unfetched(job, f"robots.txt asks {delay:g}s between requests: not fetched")
        self.crawl_next[job.origin] = turn + delay
        job.turn = turn
        self.queue.requeue(job, turn)
        return WAIT

    def hop_refusal(self, url: str, origin: str) -> FetchResult | None:
        """Whether a redirect to ``origin`` (whose robots.txt is known) may be followed."""
        return refusal(self.book.verdict(origin), url, 0)

    def record(self, origin: str, result: FetchResult) -> list[ImageJob]:
        """Record ``origin``'s robots.txt answer; return the images that waited for it."""
        self.counters["robots_txt_fetched"] += 1
        verdict = self.book.record(origin, result)
        if verdict.failure is not None:
            self.counters["robots_txt_unavailable"] += 1
        elif verdict.crawl_delay:
            self.crawl_delays[origin] = verdict.crawl_delay
        return self.parked.pop(origin, [])


def refusal(verdict: RobotsVerdict | None, url: str, attempts: int) -> FetchResult | None:
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
