"""The fetch loop's side of the site budget: which sites it may send requests to, and how many.

A fetch loop says how many connections it wants per site (``want``) and reports what sites tell
it (``throttled``, ``succeeded``); the run's broker, in another thread or process,
answers with connections held and site states (``receive``). Nothing here waits: messages are queued
and sent by ``flush`` once per loop turn, so the coordination stays off the per-image path.

Local reflexes do not wait for the ledger: a throttle pauses the site here at once; the ledger
then tells every other run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .capacity import MIN_ERRORS, MIN_SAMPLES, Observation
from .messages import Held, Observed, SiteStatus, Successes, Throttled, ToBroker, ToGate, Want
from .sites import SiteBudgets

FLUSH_S = 0.02  # messages to the broker are coalesced over this long (a throttle goes at once)
OBSERVE_S = 1.0  # what the loop saw of each adaptive site is reported this often


class SiteGate:
    """Per-site connections and pauses as this fetch loop knows them; single-threaded."""

    def __init__(
        self,
        send: Callable[[list[ToBroker]], None],
        budgets: SiteBudgets,
        *,
        backoff_base: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.send = send
        self.budgets = budgets
        self.backoff_base = backoff_base
        self.clock = clock
        self.held: dict[str, int] = {}
        self.wanted: dict[str, int] = {}
        self._sequence: dict[str, int] = {}  # the number of the site's latest want
        self.starved: set[str] = set()  # wanted more than the broker could get
        self.paused_until: dict[str, float] = {}  # clock time; only future pauses matter
        # Budgets lowered after repeated throttling: successes there earn them back.
        self.budget_now: dict[str, int] = {}
        self.share: dict[str, int] = {}  # fair shares of sites other runs wait for
        self._successes: dict[str, int] = {}
        self._samples: dict[str, list[float]] = {}  # times to the response head, per site
        self._errors: dict[str, int] = {}
        self._first_seen: dict[str, float] = {}  # the oldest answer not reported yet, per site
        self._observed_at = clock()
        self._outbox: list[ToBroker] = []
        self._urgent = False  # a throttle waits for no coalescing
        self._flushed_at = float("-inf")
        self.changed: set[str] = set()  # sites whose limit or pause changed since last look
        self.on_change = on_change  # called when answers arrived
        self.throttles = 0  # 429/503 answers this loop received
        self.paused_sites: set[str] = set()  # sites this loop saw paused, by anyone

    # -- what the loop asks --------------------------------------------------------------------

    def budget(self, site: str) -> int:
        """The site's budget now: configured, or lowered after throttling."""
        return min(self.budgets(site), self.budget_now.get(site, 1 << 30))

    def limit(self, site: str, now: float) -> int:
        """Requests this loop may have in flight to ``site`` now (0 while it is paused).

        Never more than it last asked for: what it gives back stops counting at once, before
        the broker has handed it to other runs; what it asks for counts once granted. While
        other runs wait for the site, no more than the fair share: a slot freed above it is
        not reused (it goes back when the want shrinks at the end of the loop's turn).
        """
        if self.paused_until.get(site, 0.0) > now:
            return 0
        limit = min(self.held.get(site, 0), self.wanted.get(site, 0), self.budget(site))
        share = self.share.get(site)
        return limit if share is None else min(limit, share)

    def pause_end(self, site: str) -> float:
        return self.paused_until.get(site, 0.0)

    def want(self, site: str, total: int, in_use: int = 0) -> None:
        """Hold ``total`` connections of ``site`` (0: give them all back); while other runs
        wait for the site, no more than its fair share, coming down one by one as the
        ``in_use`` requests end."""
        total = max(0, min(total, self.budget(site)))
        share = self.share.get(site)
        if share is not None:
            total = min(total, max(share, in_use))
        if self.wanted.get(site, 0) == total:
            return
        if total < self.held.get(site, 0):
            # What it gives back is no longer its own from now on: the ledger may hand it to
            # another run before the broker answers a later want for more.
            self.held[site] = total
        if total:
            self.wanted[site] = total
        else:
            self.held.pop(site, None)
            self.wanted.pop(site, None)
            self.starved.discard(site)
        sequence = self._sequence[site] = self._sequence.get(site, 0) + 1
        budgets = self.budgets
        self._outbox.append(Want(site, total, budgets(site), sequence, budgets.start(site)))

    def in_play(self, site: str) -> bool:
        return site in self.wanted

    # -- what sites told the loop --------------------------------------------------------------

    def throttled(self, site: str, retry_after: float | None, started_ago: float) -> None:
        """A 429/503: pause the site here at once; the ledger decides for how long for all."""
        self.throttles += 1
        now = self.clock()
        guess = retry_after if retry_after is not None else self.backoff_base
        self._pause(site, now + guess)
        budgets = self.budgets
        self._outbox.append(
            Throttled(site, retry_after, started_ago, budgets(site), budgets.start(site))
        )
        self._urgent = True

    def succeeded(self, site: str) -> None:
        """A body from a site whose budget was lowered: successes earn it back."""
        if site in self.budget_now:
            self._successes[site] = self._successes.get(site, 0) + 1

    def observe(self, site: str, head_seconds: float | None, error: bool) -> None:
        """One answer of an adaptive site: a body's time to its response head, or an error
        (5xx, reset, timeout). Other answers (404, a refusal) say nothing of its load."""
        if not self.budgets.adaptive:
            return
        if error:
            self._errors[site] = self._errors.get(site, 0) + 1
        elif head_seconds is not None:
            self._samples.setdefault(site, []).append(head_seconds)
        else:
            return
        self._first_seen.setdefault(site, self.clock())

    def _observations(self, now: float) -> None:
        """Report what each adaptive site answered, once a second, when there is enough of it
        to judge (``capacity.MIN_SAMPLES`` bodies, ``MIN_ERRORS`` errors) or it has waited 10 s."""
        if now - self._observed_at < OBSERVE_S:
            return
        self._observed_at = now
        budgets = self.budgets
        for site in list(self._samples.keys() | self._errors.keys()):
            samples = sorted(self._samples.get(site, ()))
            errors = self._errors.get(site, 0)
            waited = now - self._first_seen.get(site, now)
            if len(samples) < MIN_SAMPLES and errors < MIN_ERRORS and waited < 10 * OBSERVE_S:
                continue
            n = len(samples)
            quartiles = (samples[n // 4], samples[n // 2], samples[3 * n // 4]) if n else (0.0,) * 3
            fast, median, slow = quartiles
            least = samples[0] if n else 0.0
            seen = Observation(n, fast, median, errors, slow, least, span=waited)
            self._outbox.append(Observed(site, seen, budgets(site), budgets.start(site)))
            self._samples.pop(site, None)
            self._errors.pop(site, None)
            self._first_seen.pop(site, None)

    def _pause(self, site: str, until: float) -> None:
        if until > self.paused_until.get(site, 0.0):
            self.paused_until[site] = until
            self.changed.add(site)
            self.paused_sites.add(site)

    # -- the broker's side ---------------------------------------------------------------------

    def flush(self, force: bool = False) -> None:
        """Send what accumulated (one message), at most every FLUSH_S but at once for a
        throttle or when ``force``d; ``next_flush`` says when to call again if something is left."""
        now = self.clock()
        if not (force or self._urgent) and now - self._flushed_at < FLUSH_S:
            return
        for site, count in self._successes.items():
            self._outbox.append(Successes(site, count, self.budgets(site)))
        self._successes.clear()
        self._observations(now)
        if self._outbox:
            outbox, self._outbox = self._outbox, []
            self._flushed_at, self._urgent = now, False
            self.send(outbox)

    def next_flush(self) -> float | None:
        """When ``flush`` would send what is waiting (None: nothing is)."""
        if self._samples or self._errors:
            due = self._observed_at + OBSERVE_S
            if self._outbox or self._successes:
                return min(due, self._flushed_at + FLUSH_S)
            return due
        if not self._outbox and not self._successes:
            return None
        return self._flushed_at + FLUSH_S

    def receive(self, messages: list[ToGate]) -> None:
        """Apply the broker's answers (``Held``, ``SiteStatus``)."""
        now = self.clock()
        for message in messages:
            site = message.site
            if isinstance(message, Held):
                self._held(message)
            else:
                self._status(message, now)
            self.changed.add(site)
        if self.on_change is not None:
            self.on_change()

    def _held(self, answer: Held) -> None:
        site = answer.site
        if answer.share != self.share.get(site):
            if answer.share is None:
                self.share.pop(site, None)
            else:
                self.share[site] = answer.share
        if answer.sequence != self._sequence.get(site):
            return  # the answer to an older want: what it held before the last one
        if answer.count:
            self.held[site] = answer.count
        else:
            self.held.pop(site, None)
        if answer.short and site in self.wanted:
            self.starved.add(site)
        else:
            self.starved.discard(site)

    def _status(self, status: SiteStatus, now: float) -> None:
        site = status.site
        if status.pause_left > 0:
            self._pause(site, now + status.pause_left)
        if status.cap is None:
            self.budget_now.pop(site, None)
        else:
            self.budget_now[site] = status.cap
