"""Which image to start next: within each site's limit, the busiest sites first, retries first.

Busiest first because a site's images can go no faster than its budget allows: a site with a
thousand images is the run's critical path and must be kept at its limit from the start, while
sites with one image fill the remaining slots. A site's limit is not fixed: it is the slots the
run holds in the shared site ledger, zero while the site is paused, so the queue asks for it
(``limit``) and is told when it changed (``refresh``). A retry waits in a timed queue, not in a
slot; once its wait is over it goes first, since its deadline has run since its first try.
"""

from __future__ import annotations

import heapq
import itertools
import re
from collections import Counter, deque
from collections.abc import Callable

from ..storing.store import ImageJob

_URGENT = -(2**62)  # ranks before any site's backlog
_IPV4 = re.compile(r"^[0-9.]+$")


class SiteQueue:
    """Pending images by site; single-threaded (the event loop's)."""

    def __init__(self, limit: Callable[[str], int]) -> None:
        self._limit = limit
        self._pending: dict[str, deque[ImageJob]] = {}
        self._active: Counter[str] = Counter()
        self._waiting: Counter[str] = Counter()  # pending + delayed + parked, per site
        self._ready: list[tuple[int, int, str]] = []  # (-pending, order, site)
        self._in_ready: set[str] = set()
        self._delayed: list[tuple[float, int, ImageJob]] = []
        self._dropped: set[int] = set()  # ids of delayed jobs taken out by drain()
        self._order = itertools.count()
        self.total_waiting = 0

    def add(self, job: ImageJob) -> None:
        self._pending.setdefault(job.site, deque()).append(job)
        self._waiting[job.site] += 1
        self.total_waiting += 1
        self._mark_ready(job.site, again=True)  # its rank grew: older entries go stale

    def sites_by_backlog(self) -> list[str]:
        """Every site with images waiting, the busiest first (the order to bring them in)."""
        return sorted(self._waiting, key=lambda site: -self._waiting[site])

    def requeue(self, job: ImageJob, not_before: float) -> None:
        """Try ``job`` again once the loop clock reaches ``not_before``."""
        job.not_before = not_before
        heapq.heappush(self._delayed, (not_before, next(self._order), job))
        self._waiting[job.site] += 1
        self.total_waiting += 1

    def promote(self, now: float) -> None:
        """Put retries whose wait is over at the head of their site's queue, sites first in line.

        Their deadline runs since their first try: behind a busy site's backlog it would pass.
        """
        while self._delayed and self._delayed[0][0] <= now:
            job = heapq.heappop(self._delayed)[2]
            if id(job) in self._dropped:
                self._dropped.discard(id(job))
                continue
            self._pending.setdefault(job.site, deque()).appendleft(job)
            self._mark_ready(job.site, urgent=True, again=True)

    def next_retry_at(self) -> float | None:
        return self._delayed[0][0] if self._delayed else None

    def take(self, min_backlog: int = 0) -> ImageJob | None:
        """The next image to start (its site's slot taken), or None if none may start now.

        ``min_backlog``: only from the site first in line, and only if it has that many images
        waiting (the run's critical path, which is kept going while the decoders are behind).
        """
        while self._ready:
            site = self._ready[0][2]
            queue = self._pending.get(site)
            takeable = bool(queue) and self._active[site] < self._limit(site)
            if takeable and len(queue) < min_backlog:
                return None
            heapq.heappop(self._ready)
            self._in_ready.discard(site)
            if not takeable:
                continue  # a stale entry, or a site at its limit or paused
            job = queue.popleft()
            self._active[site] += 1
            self._waiting[site] -= 1
            self.total_waiting -= 1
            self._mark_ready(site)
            return job
        return None

    def release(self, site: str) -> None:
        """A request to ``site`` ended: its slot is free."""
        self._active[site] -= 1
        self._mark_ready(site)

    def park(self, job: ImageJob) -> None:
        """A taken image waits for something else (its host's robots.txt) without starting; its
        slot stays taken (the caller uses it or releases it)."""
        self._waiting[job.site] += 1
        self.total_waiting += 1

    def unpark(self, job: ImageJob) -> None:
        """A parked image may start now: at the head of its site's queue."""
        self._pending.setdefault(job.site, deque()).appendleft(job)
        self._mark_ready(job.site, urgent=True, again=True)

    def drain(self, site: str, keep: Callable[[ImageJob], bool]) -> list[ImageJob]:
        """Take out the waiting images of ``site`` (not parked ones) that ``keep`` rejects."""
        dropped: list[ImageJob] = []
        queue = self._pending.get(site)
        if queue:
            kept: deque[ImageJob] = deque()
            for job in queue:
                (kept if keep(job) else dropped).append(job)
            self._pending[site] = kept
        for _, _, job in self._delayed:
            if job.site == site and id(job) not in self._dropped and not keep(job):
                self._dropped.add(id(job))
                dropped.append(job)
        self._waiting[site] -= len(dropped)
        self.total_waiting -= len(dropped)
        return dropped

    def names_of(self, site: str) -> set[tuple[str, int]]:
        """(host name, port) of the site's waiting images, IP literals left out."""
        names = set()
        for job in self._pending.get(site, ()):
            host, _, port = job.origin.rpartition("://")[2].rpartition(":")
            if host and not host.startswith("[") and not _IPV4.match(host):
                names.add((host, int(port)))
        return names

    def waiting_sites(self) -> list[str]:
        """Sites with images waiting (retries and parked ones included)."""
        return [site for site, count in self._waiting.items() if count > 0]

    def demand(self, site: str) -> int:
        """Slots ``site`` could use: images waiting (retries, parked) plus requests in flight."""
        return self._waiting[site] + self._active[site]

    def runnable(self, site: str) -> int:
        """Slots ``site`` could fill now: requests in flight plus images ready to start (not
        parked, not waiting for a retry or a turn)."""
        queue = self._pending.get(site)
        return self._active[site] + (len(queue) if queue else 0)

    def active(self, site: str) -> int:
        return self._active[site]

    def waiting_for(self, site: str) -> int:
        """Images of ``site`` not started yet (retries included)."""
        return self._waiting[site]

    def refresh(self, site: str) -> None:
        """The site's limit changed (slots granted, a pause began or ended)."""
        self._mark_ready(site, again=True)

    def _mark_ready(self, site: str, urgent: bool = False, again: bool = False) -> None:
        """Enter ``site`` in the ready heap (``again``: even if it has an entry, now stale)."""
        queue = self._pending.get(site)
        if queue and self._active[site] < self._limit(site):
            if site in self._in_ready and not again:
                return
            self._in_ready.add(site)  # a stale entry left beside it only serves the site early
            rank = _URGENT if urgent else -len(queue)
            heapq.heappush(self._ready, (rank, next(self._order), site))
