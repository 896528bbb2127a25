"""Throttling: the state of one throttled site (429s after every burst, and the requests a
client sends inside a pause it was told to keep)."""

from __future__ import annotations

import math
from collections import Counter


class Throttle:
    """One throttled site: after every ``burst`` requests served, 429 to everything for a while.

    Each 429 announces a pause (Retry-After from when it is sent); requests received inside any
    announced pause are counted: a polite client sends none.
    """

    def __init__(self, burst: int, retry_after_s: int):
        self.burst, self.retry_after_s = burst, retry_after_s
        self.served = 0
        self.window_end = 0.0  # 429 to every request until then
        self.pause_end = 0.0  # the end of the latest pause announced
        self.counts: Counter[str] = Counter()

    def received(self, now: float) -> bool:
        """Count a request; True when it must get a 429."""
        if now < self.pause_end:
            self.counts["in_pause"] += 1
        if now < self.window_end:
            return True
        if self.served >= self.burst:
            self.served = 0
            self.window_end = now + self.retry_after_s
            self.counts["windows"] += 1
            return True
        self.served += 1
        return False

    def retry_after(self, now: float) -> int:
        """The Retry-After of a 429 sent now (the pause it announces starts now)."""
        seconds = max(1, math.ceil(self.window_end - now))
        self.pause_end = max(self.pause_end, now + seconds)
        self.counts["429"] += 1
        return seconds
