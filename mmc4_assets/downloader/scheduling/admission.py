"""Admission: which image's request starts next, and what each site asks the gate for.

A request starts only within three limits: the site's connections (the site queue hands out a
job only with a slot of its site free), the bytes bound (``room_for_request``), and the decoders'
backlog (when the CPU is the limit, more requests only make handshakes time out), except for the
site that is the run's critical path (``critical_backlog``). Sites come into play busiest first,
while what they hold and ask for falls short of the run's concurrency; a paused site's images
that cannot wait out the pause end ``rate_limited``, as do the images of sites that stayed out of
reach (held by other runs, paused) for ``total_deadline``.

Everything here runs on the fetch loop's thread; ``release`` is the one way a taken slot goes
back, so the site's demand is always recomputed.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from ..fetching.client import ByteMeter, FetchResult
from ..politeness.gate import SiteGate
from ..settings import DownloadSettings
from ..storing.store import ImageJob
from .site_queue import SiteQueue

# Bodies waiting for each decoder before new requests wait (a few seconds of its work).
BACKLOG_PER_DECODER = 16


def room_for_request(fetching: int, meter: ByteMeter, bound: int) -> bool:
    """May one more request start under the bytes bound? The bytes held (being received or
    waiting for a decoder) plus a mean body for each request in flight and the new one must fit;
    one request may always run when nothing at all is held (a body above the bound)."""
    if fetching == 0 and meter.held == 0:
        return True
    return meter.held + (fetching + 1) * meter.mean_body <= bound


def critical_backlog(settings: DownloadSettings, total_waiting: int) -> int:
    """Images waiting on one site that make it the critical path while the decoders are behind.

    A site holding more than ``per_site / max_concurrency`` of the remaining images would take
    longer at ``per_site`` at a time than the rest at full concurrency; never fewer than two
    rounds of its slots, so the sites of a run's last few images are not all critical.
    """
    share = total_waiting * settings.per_site // max(1, settings.max_concurrency)
    return max(2 * settings.per_site, share)


def unfetched(job: ImageJob, why: str) -> FetchResult:
    """The result of an image this run will not request: its last try's outcome if it had one
    (a 503 stays a 503), else ``rate_limited`` for a later run."""
    if job.last_result is not None:
        return job.last_result
    return FetchResult("rate_limited", error=f"{job.site}: {why}", attempts=job.attempts)


class Admission:
    """The run's sites in play: their demand on the gate, their pauses, the next job to start."""

    def __init__(
        self,
        settings: DownloadSettings,
        gate: SiteGate,
        queue: SiteQueue,
        end: Callable[[ImageJob, FetchResult], None],
    ) -> None:
        self.settings = settings
        self.gate = gate
        self.queue = queue
        self.end = end  # ends an image with a result, without a request
        self.order: list[str] = []  # sites, busiest first
        self.next_site = 0  # the next site of ``order`` to bring into play
        self.prefetched = 0  # sites (in ``order``) whose names were asked
        self.touched: set[str] = set()  # sites whose demand changed this turn
        self.pause_ends: list[tuple[float, str]] = []  # (end, site), a heap
        self.idle_since: float | None = None  # nothing in flight since, images still waiting

    def add(self, jobs: list[ImageJob]) -> None:
        for job in jobs:
            self.queue.add(job)
        self.order = self.queue.sites_by_backlog()

    def release(self, site: str) -> None:
        """A slot of ``site`` taken from the queue goes back (its request ended, or never
        started); the site's demand is recomputed at the end of the turn."""
        self.queue.release(site)
        self.touched.add(site)

    def next_job(self, fetching: int, decoding: int, backlog: int, meter: ByteMeter):
        """The next image to start, or None: under the concurrency and the bytes bound, and,
        while the decoders have ``backlog`` bodies waiting, only from the critical path."""
        settings, queue = self.settings, self.queue
        if fetching >= settings.max_concurrency:
            return None
        if not room_for_request(fetching, meter, settings.max_bytes_in_flight):
            return None
        if decoding < backlog:
            return queue.take()
        return queue.take(critical_backlog(settings, queue.total_waiting))

    # -- sites and the gate -----------------------------------------------------------------

    def apply_site_changes(self, now: float) -> None:
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
                self.end(job, unfetched(job, why))

    def bring_in_sites(self, now: float) -> None:
        """Ask for the slots of the next sites (busiest first) while the slots that sites in
        play could fill now fall short of the concurrency, with a margin.

        A site counts the slots it asked for, but no more than its images that could start: an
        image waiting for its host's robots.txt or for a Crawl-delay turn, or a retry waiting
        out its backoff, fills no slot. Counting those, each new host of the realistic web (one
        robots.txt request, its other images waiting for it) pledged two slots or more and ran
        one, and a run of one-image hosts used ~48 of its 64 requests (at the end of a run, where
        they are the rest of the work).
        """
        gate, queue, order = self.gate, self.queue, self.order
        target = self.settings.max_concurrency + max(8, self.settings.max_concurrency // 4)
        pledged = sum(
            min(count, queue.runnable(site))
            for site, count in gate.wanted.items()
            if site not in gate.starved and gate.pause_end(site) <= now
        )
        while pledged < target and self.next_site < len(order):
            site = order[self.next_site]
            self.next_site += 1
            demand = queue.demand(site)
            if demand:
                gate.want(site, demand)
                pledged += gate.wanted.get(site, 0)

    def prefetch_names(self, resolver) -> None:
        """Look up the names of the sites in play and of the next ones in line, before their
        first request needs them (lookups are cheap and run concurrently; waiting is not)."""
        upto = min(len(self.order), self.next_site + self.settings.max_concurrency)
        while self.prefetched < upto:
            for host, port in self.queue.names_of(self.order[self.prefetched]):
                resolver.prefetch(host, port)
            self.prefetched += 1

    def update_wants(self) -> None:
        """Tell the gate what each site touched this turn wants now."""
        gate, queue = self.gate, self.queue
        for site in self.touched:
            if gate.in_play(site):
                gate.want(site, queue.demand(site), queue.active(site))
        self.touched.clear()

    def give_up_when_idle(self, now: float, busy: bool) -> float | None:
        """When nothing has been in flight for total_deadline while images still wait (every
        site left is held by other runs, paused, or its ledger out of reach), end those images
        ``rate_limited`` for a later run rather than hold this one. Returns when to look again.
        """
        if busy or not self.queue.total_waiting:
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
                self.end(job, unfetched(job, why))
            self.touched.add(site)
        self.idle_since = None
        return None

    def next_pause_end(self) -> float | None:
        return self.pause_ends[0][0] if self.pause_ends else None
