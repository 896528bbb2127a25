"""The run's site broker: one thread, one ledger connection, serving every fetch loop of the run.

Fetch loops (in this process or in fetch worker processes) send it what they want; it batches
their wants into one ledger transaction per turn, renews the run's leases, polls the ledger for
sites other runs paused or throttled, and answers each loop with its connections and site
states. A run holds one database connection, whatever its fetch processes, and a killed run's
leases stop counting when they expire.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from .capacity import Observation, SiteLimit
from .ledger import LedgerUnavailable, SiteLedger
from .messages import Held, Observed, SiteStatus, Successes, Throttled, ToBroker, ToGate, Want
from .rules import SiteState

log = logging.getLogger(__name__)

_POLL_S = 0.1  # how often other runs' throttles are looked up: the bound on a pause's spread
_TURN_S = 0.05  # at most this often a turn: what arrives meanwhile goes in one transaction
_RETRY_SHORT_S = 0.5  # a site whose budget other runs hold is asked again after this
_SHARE_CHECK_S = 1.0  # a site held at a fair share is asked again after this (to grow back)
_CREDIT_S = 1.0  # successes at a lowered budget are reported this often
_OBSERVE_S = 1.0  # what the loops saw of adaptive sites goes to the ledger this often
_RETRY_LIMITED_S = 2.0  # a site held at its own limit is asked again after this
_WARN_EVERY_S = 30.0


@dataclass
class BrokerSettings:
    """What the broker needs of the download settings."""

    ledger_url: str | None
    lease_seconds: float
    backoff_base: float
    pause_cap: float


class SiteBroker:
    """Owns the run's leases; ``connect`` a fetch loop, ``submit`` its messages, ``close``."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._ledger = SiteLedger.open(settings.ledger_url, settings.lease_seconds)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._clients: dict[int, Callable[[list], None]] = {}
        self._owner: dict[str, int] = {}
        self._wanted: dict[str, int] = {}
        self._held: dict[str, int] = {}
        self._budget: dict[str, int] = {}  # configured budget per site, from the wants
        self._start: dict[str, int | None] = {}  # where adaptive sites' limits start
        self._seen: dict[str, tuple[Observation, int, int]] = {}  # observations not written
        self.limits: dict[str, SiteLimit] = {}  # what this run learned of each site's limit
        self.bodies: dict[str, int] = {}  # bodies observed per site (which sites were busiest)
        self._sequence: dict[str, int] = {}  # the number of the latest want per site
        self._dirty: set[str] = set()  # wants changed since the last sync
        self._retry_at: dict[str, float] = {}  # sites short of what they want: ask again then
        self._synced_at: dict[str, float] = {}  # when each site was last synced
        self._credits: dict[str, list[int]] = {}  # site -> [successes, budget]
        self._events: list[Throttled] = []  # throttles not written yet
        self._stop = threading.Event()
        self._last_change: float | None = None
        self._next_poll = self._next_renew = self._next_credit = self._next_observe = 0.0
        self._down_since: float | None = None
        self._warned_at = 0.0
        self.stats = {"ledger_transactions": 0, "ledger_seconds": 0.0, "ledger_errors": 0}
        self._thread = threading.Thread(target=self._run, name="mmc4-site-broker", daemon=True)
        self._thread.start()

    # -- the fetch loops' side -----------------------------------------------------------------

    def connect(self, deliver: Callable[[list], None]) -> int:
        """Register a fetch loop; ``deliver(messages)`` is called from the broker's thread."""
        client = len(self._clients) + 1
        self._clients[client] = deliver
        return client

    def submit(self, client: int, messages: list[ToBroker]) -> None:
        """Messages from a fetch loop (any thread)."""
        self._inbox.put((client, messages))

    def busiest(self, count: int = 10) -> list[dict]:
        """What this run learned of the limits of its busiest adaptive sites (by bodies)."""
        rows = []
        for site in sorted(self.limits, key=lambda site: -self.bodies.get(site, 0))[:count]:
            limit = self.limits[site]
            ceiling = self._budget.get(site, int(limit.peak))
            rows.append(
                {
                    "site": site,
                    "bodies": self.bodies.get(site, 0),
                    "limit_reached": max(1, min(ceiling, int(limit.peak))),
                    "limit_at_end": limit.allowed(ceiling),
                    "unloaded_ms": round(1000 * (limit.unloaded or 0.0)),
                    "loaded_ms": round(1000 * (limit.loaded or 0.0)),
                }
            )
        return rows

    def close(self) -> None:
        """Give back every lease of the run and stop."""
        self._stop.set()
        self._inbox.put(None)
        self._thread.join(timeout=30)
        try:
            self._ledger.release_all(self.holder)
        except LedgerUnavailable:
            pass  # the leases expire on their own
        finally:
            self._ledger.close()

    def __enter__(self) -> SiteBroker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            timeout = max(0.0, min(self._next_poll, self._due_retry()) - time.monotonic())
            try:
                item = self._inbox.get(timeout=timeout)
            except queue.Empty:
                item = False
            batch = []
            while item:
                batch.append(item)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = False
            if item is None:
                return
            turn_started = time.monotonic()
            try:
                self._turn(batch)
                self._down_since = None
            except LedgerUnavailable as error:
                self._unavailable(error)
                time.sleep(0.5)
            except Exception:  # noqa: BLE001 - the run goes on with the leases it holds
                log.exception("site broker: unexpected error")
                time.sleep(0.5)
            self._stop.wait(max(0.0, turn_started + _TURN_S - time.monotonic()))

    def _due_retry(self) -> float:
        return min(self._retry_at.values(), default=self._next_poll)

    def _timed(self, action, *args, **kwargs):
        started = time.perf_counter()
        try:
            return action(*args, **kwargs)
        finally:
            self.stats["ledger_transactions"] += 1
            self.stats["ledger_seconds"] += time.perf_counter() - started

    def _turn(self, batch: list) -> None:
        answers: dict[int, list[ToGate]] = {}
        try:
            self._work(batch, answers)
        finally:  # what was decided reaches the loops even when a later step failed
            for client, messages in answers.items():
                try:
                    self._clients[client](messages)
                except Exception:  # noqa: BLE001 - a worker that died; the run notices
                    log.debug("site broker: could not answer fetch loop %s", client)

    def _work(self, batch: list, answers: dict) -> None:
        for client, messages in batch:
            for message in messages:
                self._apply(client, message, answers)
        self._write_events(answers)  # throttles first: they stop other runs soonest
        now = time.monotonic()
        due = set(self._dirty)
        due.update(site for site, at in self._retry_at.items() if at <= now)
        renew = now >= self._next_renew
        if renew:
            self._next_renew = now + self.settings.lease_seconds / 3
            due.update(self._held)  # renewed, and shrunk to a budget lowered meanwhile
        if due or renew:
            self._sync(due, renew, now, answers)
        if now >= self._next_poll:
            self._next_poll = now + _POLL_S
            self._poll(answers)
        if now >= self._next_observe and self._seen:
            self._next_observe = now + _OBSERVE_S
            self._write_observations()
        if now >= self._next_credit and self._credits:
            self._next_credit = now + _CREDIT_S
            credits, self._credits = self._credits, {}
            for site, (count, budget) in credits.items():
                self._tell_state(self._timed(self._ledger.credit, site, count, budget), answers)

    def _apply(self, client: int, message: ToBroker, answers: dict) -> None:
        site = message.site
        if isinstance(message, Want):
            self._owner[site] = client
            self._budget[site], self._sequence[site] = message.budget, message.sequence
            self._start[site] = message.start
            if message.total:
                self._wanted[site] = message.total
            else:
                self._wanted.pop(site, None)
            self._dirty.add(site)
        elif isinstance(message, Successes):
            entry = self._credits.setdefault(site, [0, message.budget])
            entry[0] += message.count
        elif isinstance(message, Throttled):  # written in this turn, kept until it is
            self._owner.setdefault(site, client)
            self._events.append(message)
        elif isinstance(message, Observed):
            seen = message.seen
            earlier = self._seen.get(site)
            if earlier is not None:  # two reports in one interval: the larger, errors of both
                bigger = seen if seen.bodies >= earlier[0].bodies else earlier[0]
                errors = seen.errors + earlier[0].errors
                seen = dataclasses.replace(bigger, errors=errors)
            self._seen[site] = (seen, message.budget, message.start)
            self.bodies[site] = self.bodies.get(site, 0) + message.seen.bodies

    def _write_events(self, answers: dict) -> None:
        while self._events:
            event = self._events[0]
            state = self._timed(
                self._ledger.throttle,
                event.site,
                budget=event.budget,
                retry_after=event.retry_after,
                started_ago=event.started_ago,
                backoff_base=self.settings.backoff_base,
                pause_cap=self.settings.pause_cap,
                start=event.start,
            )
            self._tell_state(state, answers)
            self._events.pop(0)

    def _write_observations(self) -> None:
        """The sites' new limits from what the loops saw; the sites this run holds or wants
        are synced next turn, so their leases follow the limit at once."""
        seen, self._seen = self._seen, {}
        limits = self._timed(self._ledger.observe, seen)
        self.limits.update(limits)
        self._dirty.update(site for site in limits if site in self._wanted or site in self._held)

    def _sync(self, due: set[str], renew: bool, now: float, answers: dict) -> None:
        # Giving back needs no look at other runs' leases; only growing (and a renewal, which
        # shrinks to a budget lowered meanwhile) does.
        fewer = {}
        wants = {}
        for site in due:
            wanted = self._wanted.get(site, 0)
            if wanted < self._held.get(site, 0) and not renew:
                fewer[site] = wanted
            elif wanted or site in self._held:
                start = self._start.get(site)
                budget = self._budget.get(site, 1)
                wants[site] = (wanted, budget) if start is None else (wanted, budget, start)
        synced = self._timed(self._ledger.sync, self.holder, wants, fewer=fewer, renew=renew)
        held, states, shares = synced.held, synced.states, synced.shares
        held.update(fewer)
        self._dirty.difference_update(due)
        for site in due:
            count = held.get(site, 0)
            if count:
                self._held[site] = count
            else:
                self._held.pop(site, None)
            self._synced_at[site] = now
            wanted = self._wanted.get(site, 0)
            short = count < wanted
            share = shares.get(site)  # others wait: come down to this as requests end
            if count < min(wanted, synced.limits.get(site, wanted)):  # others hold the rest
                self._retry_at[site] = now + _RETRY_SHORT_S
            elif short:  # held at the site's own limit: it grows as the site answers
                self._retry_at[site] = now + _RETRY_LIMITED_S
            elif share is not None:  # asked again to grow back when nobody waits any more
                self._retry_at[site] = now + _SHARE_CHECK_S
            else:
                self._retry_at.pop(site, None)
            client = self._owner.get(site)
            if client is not None:
                sequence = self._sequence.get(site, 0)  # the want this answers
                answers.setdefault(client, []).append(Held(site, count, short, sequence, share))
            state = states.get(site)
            if state is not None and (state.pause_left > 0 or state.cap is not None):
                self._tell_state(state, answers)

    def _poll(self, answers: dict) -> None:
        changed, self._last_change = self._timed(self._ledger.changed_since, self._last_change)
        now = time.monotonic()
        for state in changed:
            site = state.site
            if site in self._owner:
                self._tell_state(state, answers)
            # Another run may wait for a site this one holds: look at the leases again.
            if site in self._held and now - self._synced_at.get(site, 0.0) >= _RETRY_SHORT_S:
                self._dirty.add(site)

    def _tell_state(self, state: SiteState, answers: dict) -> None:
        client = self._owner.get(state.site)
        if client is None:
            return
        answers.setdefault(client, []).append(SiteStatus(state.site, state.pause_left, state.cap))

    def _unavailable(self, error: LedgerUnavailable) -> None:
        now = time.monotonic()
        self.stats["ledger_errors"] += 1
        if self._down_since is None:
            self._down_since = now
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            log.warning(
                "site ledger unreachable for %.0fs (%s): the run keeps the connections it "
                "holds and waits for the rest",
                now - self._down_since,
                error,
            )


def open_broker(settings) -> SiteBroker:
    """The broker of a run with these DownloadSettings."""
    return SiteBroker(
        BrokerSettings(
            ledger_url=settings.ledger_url,
            lease_seconds=settings.site_lease_seconds,
            backoff_base=settings.backoff_base,
            pause_cap=settings.retry_after_cap,
        )
    )


def local_link(broker: SiteBroker):
    """``connect`` for a fetch loop in the broker's own process (workers link through pipes)."""

    def connect(deliver: Callable[[list], None]) -> Callable[[list], None]:
        client = broker.connect(deliver)
        return lambda messages: broker.submit(client, messages)

    return connect
