"""Which image to start next: a per-host limit, the busiest hosts first, retries at the back.

Busiest first because a host's images can go no faster than ``per_host`` at a time: a host with
a thousand images is the run's critical path and must be kept at its limit from the start,
while hosts with one image fill the remaining slots. A retry waits in a timed queue, not in a
slot, and rejoins its host's queue at the back once its wait is over.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, deque

from ..storing.store import ImageJob


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
        self._mark_ready(job.host)

    def requeue(self, job: ImageJob, not_before: float) -> None:
        """Try ``job`` again once the loop clock reaches ``not_before``."""
        job.not_before = not_before
        heapq.heappush(self._delayed, (not_before, next(self._order), job))
        self._waiting[job.host] += 1
        self.total_waiting += 1

    def promote(self, now: float) -> None:
        """Move retries whose wait is over to the back of their host's queue."""
        while self._delayed and self._delayed[0][0] <= now:
            job = heapq.heappop(self._delayed)[2]
            self._pending.setdefault(job.host, deque()).append(job)
            self._mark_ready(job.host)

    def next_retry_at(self) -> float | None:
        return self._delayed[0][0] if self._delayed else None

    def take(self) -> ImageJob | None:
        """The next image to start (its host's slot taken), or None if none may start now."""
        while self._ready:
            _, _, host = heapq.heappop(self._ready)
            self._in_ready.discard(host)
            queue = self._pending.get(host)
            if not queue or self._active[host] >= self._per_host:
                continue
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

    def _mark_ready(self, host: str) -> None:
        queue = self._pending.get(host)
        if queue and host not in self._in_ready and self._active[host] < self._per_host:
            self._in_ready.add(host)
            heapq.heappush(self._ready, (-len(queue), next(self._order), host))
