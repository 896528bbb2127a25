"""The site ledger: each site's connection budget and throttle state, shared by every run.

Where it lives is where the deployment already keeps shared state: the Dagster instance's
Postgres when the instance is on Postgres (runs on many machines), a SQLite file beside the
instance otherwise (every CLI and daemon run on one machine), or memory for a lone engine run.

A run holds a *lease* per site it is fetching from: a number of connections, with an expiry it
renews. A lease grows only while the site is locked (an advisory lock per site in Postgres, the
database's write lock in SQLite) and only into what the other holders' unexpired leases leave
of the site's budget, so the leases of a site never add up to more than its budget, whatever
the interleaving; a killed run's leases stop counting when they expire. All of a run's changes
of a moment (more for some sites, less for others, renewals) go in one transaction.

Throttling is a site's state: ``paused_until`` (no run sends a request before it), the number
of throttles in a row, and a lowered budget (``cap``) that grows back by one for every ``cap``
successes. Holders shrink to a lowered budget at their next renewal. Times are the database's
clock, so machines need not agree. The rules themselves (what a holder is granted, what a
throttle or a success does to a site) are pure functions in ``rules.py``; here is the SQL,
and the two databases it runs on are in ``ledger_backends.py``.

Why one module of ~520 lines: every method is one transaction over the same four tables, and
``sync`` touches all of them at once (leases, site states, limits, change marks); split by table,
each part would need the others' locks and SQL to stay correct, and the reader would lose the
one place that shows a transaction whole. What can stand alone already does (rules, capacity,
backends, and the robots.txt cache's table, which no ledger transaction touches: robots_cache).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import NamedTuple

from . import capacity
from .capacity import Observation, SiteLimit
from .rules import (
    Others,
    SiteState,
    after_successes,
    after_throttle,
    grant,
)

NOBODY = Others()

_BATCH = 200  # rows per statement
# A site's throttle state unchanged this long, and not paused, is forgotten (its row deleted,
# at most _PRUNE rows per observation): the table holds the sites of the last day, not of the
# corpus. A forgotten site starts over as a new one (no pause, no lowered budget).
STATE_FORGET_S = 24 * 3600.0
_PRUNE = 500

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS mmc4_site_leases (
        holder TEXT NOT NULL,
        site TEXT NOT NULL,
        connections INTEGER NOT NULL,
        wanted INTEGER NOT NULL DEFAULT 0,
        expires_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (holder, site))""",
    "CREATE INDEX IF NOT EXISTS mmc4_site_leases_site ON mmc4_site_leases (site)",
    """CREATE TABLE IF NOT EXISTS mmc4_site_state (
        site TEXT PRIMARY KEY,
        paused_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        throttled_at DOUBLE PRECISION,
        strikes INTEGER NOT NULL DEFAULT 0,
        cap INTEGER,
        credit INTEGER NOT NULL DEFAULT 0,
        changed_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS mmc4_site_state_changed ON mmc4_site_state (changed_at)",
    # Each site's concurrency limit, learned from every run's observations (capacity.py).
    """CREATE TABLE IF NOT EXISTS mmc4_site_limits (
        site TEXT PRIMARY KEY,
        lim DOUBLE PRECISION NOT NULL,
        unloaded DOUBLE PRECISION,
        loaded DOUBLE PRECISION,
        slow_start INTEGER NOT NULL,
        in_use INTEGER NOT NULL,
        observed_at DOUBLE PRECISION NOT NULL,
        peak DOUBLE PRECISION NOT NULL,
        settling INTEGER NOT NULL,
        answers INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS mmc4_site_limits_observed ON mmc4_site_limits (observed_at)",
    # robots.txt fetched in the last 24 hours, bodies zlib-compressed (robots_cache.py).
    """CREATE TABLE IF NOT EXISTS mmc4_robots (
        origin TEXT PRIMARY KEY,
        fetched_at DOUBLE PRECISION NOT NULL,
        status INTEGER NOT NULL,
        body BYTEA)""",
    "CREATE INDEX IF NOT EXISTS mmc4_robots_fetched ON mmc4_robots (fetched_at)",
)
# Columns added to a table after its first release: (table, column, definition). A ledger made
# before them gets them when a run opens it (``migrate``).
ADDED_COLUMNS = (("mmc4_site_limits", "answers", "INTEGER NOT NULL DEFAULT 0"),)
_LIMIT_COLUMNS = (
    "site, lim, unloaded, loaded, slow_start, in_use, observed_at, peak, settling, answers"
)
_STATE_COLUMNS = "site, paused_until, throttled_at, strikes, cap, credit"


def _limit(row) -> SiteLimit:
    site, limit, unloaded, loaded, slow_start, in_use, observed_at, peak, settling, answers = row
    return SiteLimit(
        site,
        float(limit),
        unloaded,
        loaded,
        bool(slow_start),
        int(in_use),
        observed_at,
        peak,
        bool(settling),
        int(answers),
    )


def migrate(cursor) -> None:
    """Create the ledger's tables, and add the columns a ledger made by an older version lacks
    (both databases take ``ALTER TABLE … ADD COLUMN``; the caller holds the schema's lock)."""
    for statement in SCHEMA:
        cursor.execute(statement)
    for table, column, definition in ADDED_COLUMNS:
        cursor.execute(f"SELECT * FROM {table} LIMIT 0")
        if column not in {entry[0] for entry in cursor.description}:
            cursor.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    # When the robots.txt table was made (the old layout is read for a day after: robots_cache).
    cursor.execute(
        "INSERT INTO mmc4_robots (origin, fetched_at, status) "
        f"VALUES ('', {time.time()!r}, 0) ON CONFLICT (origin) DO NOTHING"
    )


class Synced(NamedTuple):
    """What ``sync`` decided, per site of the wants."""

    held: dict[str, int]  # connections the holder holds now
    states: dict[str, SiteState]
    shares: dict[str, int]  # fair shares of sites other holders wait for
    limits: dict[str, int]  # the sites' limits (what all holders together may have)


def _state(row, now: float) -> SiteState:
    site, paused_until, throttled_at, strikes, cap, credit = row
    return SiteState(site, float(paused_until), throttled_at, int(strikes), cap, int(credit), now)


class LedgerUnavailable(RuntimeError):
    """The ledger's database cannot be reached right now (the caller retries later)."""


class SiteLedger:
    """One connection to the shared ledger; used by one thread (the run's site broker)."""

    lease_seconds: float

    @staticmethod
    def open(url: str | None, lease_seconds: float = 30.0) -> SiteLedger:
        """``postgresql://…`` (the instance's database), ``sqlite:///path``, or None (memory)."""
        from .ledger_backends import PostgresLedger, SqliteLedger

        if url and url.startswith(("postgresql", "postgres:")):
            return PostgresLedger(url, lease_seconds)
        if url and url.startswith("sqlite:///"):
            return SqliteLedger(url.removeprefix("sqlite:///"), lease_seconds)
        if url:
            raise ValueError(f"site ledger {url!r}: expected postgresql://… or sqlite:///path")
        return SqliteLedger(":memory:", lease_seconds)

    # -- what a backend provides --------------------------------------------------------------

    _marker = "?"
    _skip_locked = ""  # rows another transaction holds are left for a later prune (Postgres)

    def _transaction(self, write: bool) -> contextlib.AbstractContextManager:
        raise NotImplementedError

    def _now(self, cursor) -> float:
        raise NotImplementedError

    def _lock_states(self, cursor, sites: list[str], now: float) -> None:
        """Make rows for ``sites`` exist, locked until the transaction ends."""
        raise NotImplementedError

    def _lock_sites(self, cursor, sites: list[str]) -> None:
        """Hold ``sites`` (sorted) for the rest of the transaction: no other holder changes its
        lease on them meanwhile."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- operations ---------------------------------------------------------------------------

    def _marks(self, count: int) -> str:
        return ", ".join([self._marker] * count)

    def _states(self, cursor, sites: list[str], now: float) -> dict[str, SiteState]:
        found: dict[str, SiteState] = {}
        for part in chunks(sites):
            cursor.execute(
                f"SELECT {_STATE_COLUMNS} FROM mmc4_site_state "
                f"WHERE site IN ({self._marks(len(part))})",
                part,
            )
            for row in cursor.fetchall():
                found[row[0]] = _state(row, now)
        return found

    def states(self, sites: Iterable[str]) -> dict[str, SiteState]:
        """The state of each of ``sites`` (a default state for those never throttled)."""
        sites = list(sites)
        with self._transaction(write=False) as cursor:
            now = self._now(cursor)
            found = self._states(cursor, sites, now)
        return {site: found.get(site) or SiteState(site, now=now) for site in sites}

    def sync(
        self,
        holder: str,
        wants: Mapping[str, tuple[int, ...]],
        *,
        fewer: Mapping[str, int] | None = None,
        renew: bool = False,
    ) -> Synced:
        """Set the holder's connections to each site (``wants``: site -> (wanted, ceiling[,
        start])) to what ``rules.grant`` gives it under the site's limit (``capacity``: learned,
        between 1 and the ceiling, ``start`` before anything was learned; the ceiling when no
        start is given); give back what ``fewer`` says (site -> connections to keep, fewer
        than held: nothing to check); with ``renew``, extend all its leases. One transaction.

        A holder that wants more than it got keeps a row (at 0 connections if need be), so the
        others see it waiting; one short of what others hold marks the site changed, so they
        look again at once.
        """
        sites = sorted(wants)
        with self._transaction(write=True) as cursor:
            now = self._now(cursor)
            self._give_back(cursor, holder, fewer or {})
            if not sites:
                if renew:
                    self._renew(cursor, holder, now)
                return Synced({}, {}, {}, {})
            self._lock_sites(cursor, sites)
            found = self._states(cursor, sites, now)
            learned = self._limits(cursor, sites)
            mine, others = self._leases(cursor, holder, sites, now)
            synced = Synced({}, {}, {}, {})
            rows, gone, contended = [], [], []
            expires = now + self.lease_seconds
            for site in sites:
                wanted, ceiling, start = _want(wants[site])
                state = synced.states[site] = found.get(site) or SiteState(site, now=now)
                limit = capacity.current(learned.get(site), site, start, now).allowed(ceiling)
                synced.limits[site] = state.budget(limit)
                other = others.get(site, NOBODY)
                given = grant(state, limit, wanted, mine.get(site, 0), other)
                synced.held[site] = given.connections
                if given.share is not None:
                    synced.shares[site] = given.share
                if wanted > 0:  # at 0 connections too: the others see it waiting
                    rows.append((holder, site, given.connections, wanted, expires))
                elif site in mine:
                    gone.append(site)
                if given.connections < min(wanted, synced.limits[site]) and other.held:
                    contended.append(site)
            self._upsert_leases(cursor, rows)
            self._drop(cursor, holder, gone)
            self._mark_changed(cursor, contended, now)
            if renew:
                self._renew(cursor, holder, now)
        return synced

    def observe(self, seen: Mapping[str, tuple[Observation, int, int]]) -> dict[str, SiteLimit]:
        """One run's reports (site -> (observation, ceiling, start)): each site's limit after
        ``capacity.next_limit``, in one transaction. A limit that fell marks its site changed,
        so every holder comes down to it within a poll; limits unobserved for
        ``capacity.FORGET_S`` are deleted, and so are states past ``STATE_FORGET_S``."""
        sites = sorted(seen)
        if not sites:
            return {}
        with self._transaction(write=True) as cursor:
            now = self._now(cursor)
            self._lock_sites(cursor, sites)
            learned = self._limits(cursor, sites)
            leased, wanting, holders = self._demand(cursor, sites, now)
            out: dict[str, SiteLimit] = {}
            fell = []
            for site in sites:
                observation, ceiling, start = seen[site]
                before = capacity.current(learned.get(site), site, start, now)
                in_use = leased.get(site, 0)
                out[site] = capacity.next_limit(
                    before,
                    observation,
                    ceiling=ceiling,
                    in_use=in_use,
                    bottleneck=in_use >= before.allowed(ceiling) and site in wanting,
                    shared=holders[site] > 1,
                    now=now,
                )
                if out[site].allowed(ceiling) < before.allowed(ceiling):
                    fell.append(site)
            self._write_limits(cursor, list(out.values()))
            self._mark_changed(cursor, fell, now)
            cursor.execute(
                f"DELETE FROM mmc4_site_limits WHERE observed_at < {self._marker}",
                [now - capacity.FORGET_S],
            )
            cursor.execute(
                "DELETE FROM mmc4_site_state WHERE site IN (SELECT site FROM mmc4_site_state "
                f"WHERE changed_at < {self._marker} AND paused_until < {self._marker} "
                f"LIMIT {_PRUNE}{self._skip_locked})",
                [now - STATE_FORGET_S, now],
            )
        return out

    def _limits(self, cursor, sites: list[str]) -> dict[str, SiteLimit]:
        found: dict[str, SiteLimit] = {}
        for part in chunks(sites):
            cursor.execute(
                f"SELECT {_LIMIT_COLUMNS} FROM mmc4_site_limits "
                f"WHERE site IN ({self._marks(len(part))})",
                part,
            )
            for row in cursor.fetchall():
                found[row[0]] = _limit(row)
        return found

    def _write_limits(self, cursor, limits: list[SiteLimit]) -> None:
        for part in chunks(limits):
            values = ", ".join(f"({self._marks(10)})" for _ in part)
            cursor.execute(
                f"INSERT INTO mmc4_site_limits ({_LIMIT_COLUMNS}) VALUES {values} "
                "ON CONFLICT (site) DO UPDATE SET lim = excluded.lim, "
                "unloaded = excluded.unloaded, loaded = excluded.loaded, "
                "slow_start = excluded.slow_start, in_use = excluded.in_use, "
                "observed_at = excluded.observed_at, peak = excluded.peak, "
                "settling = excluded.settling, answers = excluded.answers",
                [
                    value
                    for limit in part
                    for value in (
                        limit.site,
                        limit.limit,
                        limit.unloaded,
                        limit.loaded,
                        int(limit.slow_start),
                        limit.in_use,
                        limit.observed_at,
                        limit.peak,
                        int(limit.settling),
                        limit.answers,
                    )
                ],
            )

    def _demand(
        self, cursor, sites: list[str], now: float
    ) -> tuple[Counter[str], set[str], Counter[str]]:
        """Connections leased per site (every holder), the sites some holder wants more of, and
        the holders per site (runs holding or wanting some of it)."""
        leased: Counter[str] = Counter()
        wanting: set[str] = set()
        holders: Counter[str] = Counter()
        for part in chunks(sites):
            cursor.execute(
                "SELECT site, connections, wanted FROM mmc4_site_leases "
                f"WHERE site IN ({self._marks(len(part))}) AND expires_at > {self._marker}",
                [*part, now],
            )
            for site, connections, wanted in cursor.fetchall():
                leased[site] += int(connections)
                holders[site] += connections > 0 or wanted > 0
                if wanted > connections:
                    wanting.add(site)
        return leased, wanting, holders

    def _leases(
        self, cursor, holder: str, sites: list[str], now: float
    ) -> tuple[dict[str, int], dict[str, Others]]:
        """The holder's connections per site, and the other holders' unexpired leases."""
        mine: dict[str, int] = {}
        held: Counter[str] = Counter()
        contenders: Counter[str] = Counter()
        waiting: Counter[str] = Counter()
        for part in chunks(sites):
            cursor.execute(
                "SELECT site, holder, connections, wanted FROM mmc4_site_leases "
                f"WHERE site IN ({self._marks(len(part))}) "
                f"AND (expires_at > {self._marker} OR holder = {self._marker})",
                [*part, now, holder],
            )
            for site, owner, connections, wanted in cursor.fetchall():
                if owner == holder:
                    mine[site] = int(connections)
                    continue
                held[site] += int(connections)
                contenders[site] += wanted > 0
                waiting[site] += wanted > connections
        others = {
            site: Others(held[site], contenders[site], waiting[site])
            for site in held.keys() | contenders.keys()
        }
        return mine, others

    def _mark_changed(self, cursor, sites: list[str], now: float) -> None:
        """Sites a holder waits for, that others hold: their holders, polling for changed
        sites, look again at once and learn the fair share (instead of at their next renewal,
        after which a short run may already have given up)."""
        if sites:
            cursor.executemany(
                f"INSERT INTO mmc4_site_state (site, changed_at) VALUES ({self._marks(2)}) "
                "ON CONFLICT (site) DO UPDATE SET changed_at = excluded.changed_at",
                [(site, now) for site in sites],
            )

    def _upsert_leases(self, cursor, rows: list[tuple]) -> None:
        for part in chunks(rows):
            values = ", ".join(f"({self._marks(5)})" for _ in part)
            cursor.execute(
                "INSERT INTO mmc4_site_leases (holder, site, connections, wanted, expires_at) "
                f"VALUES {values} ON CONFLICT (holder, site) DO UPDATE SET "
                "connections = excluded.connections, wanted = excluded.wanted, "
                "expires_at = excluded.expires_at",
                [value for row in part for value in row],
            )

    def _renew(self, cursor, holder: str, now: float) -> None:
        cursor.execute(
            f"UPDATE mmc4_site_leases SET expires_at = {self._marker} "
            f"WHERE holder = {self._marker}",
            [now + self.lease_seconds, holder],
        )

    def _give_back(self, cursor, holder: str, fewer: Mapping[str, int]) -> None:
        keep = [(count, holder, site) for site, count in fewer.items() if count > 0]
        if keep:
            cursor.executemany(
                f"UPDATE mmc4_site_leases SET connections = {self._marker}, "
                f"wanted = {self._marker} WHERE holder = {self._marker} AND site = {self._marker}",
                [(count, count, who, site) for count, who, site in keep],
            )
        self._drop(cursor, holder, sorted(site for site, count in fewer.items() if count <= 0))

    def _drop(self, cursor, holder: str, sites: list[str]) -> None:
        """The holder's leases of ``sites`` end."""
        for part in chunks(sites):
            cursor.execute(
                f"DELETE FROM mmc4_site_leases WHERE holder = {self._marker} "
                f"AND site IN ({self._marks(len(part))})",
                [holder, *part],
            )

    def release_all(self, holder: str) -> None:
        with self._transaction(write=True) as cursor:
            cursor.execute(f"DELETE FROM mmc4_site_leases WHERE holder = {self._marker}", [holder])

    def throttle(
        self,
        site: str,
        *,
        budget: int,
        retry_after: float | None,
        started_ago: float,
        backoff_base: float,
        pause_cap: float,
        start: int | None = None,
    ) -> SiteState:
        """A 429 or 503 from ``site``: its state after ``rules.after_throttle``, for every run.

        With ``start`` (adaptive limits; ``budget`` is then the ceiling), the learned limit
        takes the place of the lowered budget: a new episode changes it as
        ``capacity.after_throttle`` says (halved unless the site answered many requests since
        its last), and the state keeps no ``cap`` of its own."""

        def rule(state: SiteState, learned: SiteLimit | None = None) -> SiteState:
            return after_throttle(
                state,
                budget=budget,
                retry_after=retry_after,
                started_ago=started_ago,
                backoff_base=backoff_base,
                pause_cap=pause_cap,
                learned=learned is not None,
                answered=bool(learned and learned.answers),
            )

        if start is None:
            return self._update_state(site, rule)
        with self._transaction(write=True) as cursor:
            now = self._now(cursor)
            self._lock_states(cursor, [site], now)
            learned = capacity.current(self._limits(cursor, [site]).get(site), site, start, now)
            state = self._states(cursor, [site], now)[site]
            new = rule(state, learned)
            if new.throttled_at != state.throttled_at:  # a new episode
                self._write_limits(cursor, [capacity.after_throttle(learned, budget, now)])
            self._write_state(cursor, new, now)
            return new

    def credit(self, site: str, successes: int, budget: int) -> SiteState:
        """Successes at a lowered budget: the site's state after ``rules.after_successes``."""
        return self._update_state(site, lambda state: after_successes(state, successes, budget))

    def _update_state(self, site: str, rule: Callable[[SiteState], SiteState]) -> SiteState:
        """Apply ``rule`` to the site's state under its lock, in one transaction."""
        with self._transaction(write=True) as cursor:
            now = self._now(cursor)
            self._lock_states(cursor, [site], now)
            state = self._states(cursor, [site], now)[site]
            new = rule(state)
            if new is state:
                return state
            self._write_state(cursor, new, now)
            return new

    def _write_state(self, cursor, new: SiteState, now: float) -> None:
        cursor.execute(
            f"UPDATE mmc4_site_state SET paused_until = {self._marker}, "
            f"throttled_at = {self._marker}, strikes = {self._marker}, cap = {self._marker}, "
            f"credit = {self._marker}, changed_at = {self._marker} "
            f"WHERE site = {self._marker}",
            [new.paused_until, new.throttled_at, new.strikes, new.cap, new.credit, now, new.site],
        )

    def changed_since(self, since: float | None) -> tuple[list[SiteState], float]:
        """States changed after ``since`` (database clock; None: in the last second), and the
        clock to pass next time. Consecutive calls overlap by a second, so a change committed
        late is still seen."""
        with self._transaction(write=False) as cursor:
            now = self._now(cursor)
            start = (now if since is None else min(since, now)) - 1.0
            cursor.execute(
                f"SELECT {_STATE_COLUMNS} FROM mmc4_site_state WHERE changed_at > {self._marker}",
                [start],
            )
            return [_state(row, now) for row in cursor.fetchall()], now


def _want(want: tuple[int, ...]) -> tuple[int, int, int]:
    """(wanted, ceiling, start) of a want; without a start, the ceiling is the fixed budget."""
    wanted, ceiling = want[0], want[1]
    return wanted, ceiling, want[2] if len(want) > 2 else ceiling


def chunks(items: list, size: int = _BATCH) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
