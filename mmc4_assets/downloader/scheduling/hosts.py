"""Which image to start next: a per-host limit, the busiest hosts first, due retries before all.

Busiest first because a host's images can go no faster than ``per_host`` at a time: a host with
a thousand images is the run's critical path and must be kept at its limit from the start,
while hosts with one image fill the remaining slots. A retry waits in a timed queue, not in a
slot; once its wait is over it goes first, since its deadline has run since its first try.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, deque

from ..storing.store import ImageJob

_URGENT = -(2**62)  # ranks before any host's backlog


class HostQueue:
    """Pending images by host; single-threaded (the event loop's)."""

    def __init__(self, per_host: int) -> None:
        self._per_host = max(1, per_host)
        self._pending: dict[str, deque[ImageJob]] = {}
        self._active: Counter[str] = Counter()
        self._waiting: Counter[str] = Counter()  # pending + delayed, per host
        self._ready: list[tuple[int, int, str]] = []  # (-pending, order, host)
        self._in_ready: set[str] = set()
        self._delayed: list[tuple[float, int, ImageJob]] = []
        self._order = itertools.count()
        self.total_waiting = 0

    def add(self, job: ImageJob) -> None:
        self._pending.setdefault(job.host, deque()).append(job)
        self._waiting[job.host] += 1
        self.total_waiting += 1
        self._mark_ready(job.host, again=True)  # its rank grew: older entries go stale

    def requeue(self, job: ImageJob, not_before: float) -> None:
        """Try ``job`` again once the loop clock reaches ``not_before``."""
        job.not_before = not_before
        heapq.heappush(self._delayed, (not_before, next(self._order), job))
        self._waiting[job.host] += 1
        self.total_waiting += 1

    def promote(self, now: float) -> None:
        """Put retries whose wait is over at the head of their host's queue, hosts first in line.

        Their deadline runs since their first try: behind a busy host's backlog it would pass.
        """
        while self._delayed and self._delayed[0][0] <= now:
            job = heapq.heappop(self._delayed)[2]
            self._pending.setdefault(job.host, deque()).appendleft(job)
            self._mark_ready(job.host, urgent=True, again=True)

    def next_retry_at(self) -> float | None:
        return self._delayed[0][0] if self._delayed else None

    def take(self, min_backlog: int = 0) -> ImageJob | None:
        """The next image to start (its host's slot taken), or None if none may start now.

        ``min_backlog``: only from the host first in line, and only if it has that many images
        waiting (the run's critical path, which is kept going while the decoders are behind).
        """
        while self._ready:
            host = self._ready[0][2]
            queue = self._pending.get(host)
            takeable = bool(queue) and self._active[host] < self._per_host
            if takeable and len(queue) < min_backlog:
                return None
            heapq.heappop(self._ready)
            self._in_ready.discard(host)
            if not takeable:
                continue  # a stale entry
            job = queue.popleft()
            self._active[host] += 1
            self._waiting[host] -= 1
            self.total_waiting -= 1
            self._mark_ready(host)
            return job
        return None

    def release(self, host: str) -> None:
        """A request to ``host`` ended: its slot is free."""
        self._active[host] -= 1
        self._mark_ready(host)

    def waiting_for(self, host: str) -> int:
        """Images of ``host`` not started yet (retries included)."""
        return self._waiting[host]

    def _mark_ready(self, host: str, urgent: bool = False, again: bool = False) -> None:
        """Enter ``host`` in the ready heap (``again``: even if it has an entry, now stale)."""
        queue = self._pending.get(host)
        if queue and self._active[host] < self._per_host:
            if host in self._in_ready and not again:
                return
            self._in_ready.add(host)  # a stale entry left beside it only serves the host early
            rank = _URGENT if urgent else -len(queue)
            heapq.heappush(self._ready, (rank, next(self._order), host))
