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
clock, so machines need not agree.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

# A throttle counts as a repeat (and halves the budget) when it follows the site's previous one
# within this many seconds.
REPEAT_WINDOW_S = 60.0
_BATCH = 200  # rows per statement

_SCHEMA = (
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
)
_STATE_COLUMNS = "site, paused_until, throttled_at, strikes, cap, credit"


@dataclass(frozen=True)
class SiteState:
    """What every run must respect about one site, as seen at ``now`` (database clock)."""

    site: str
    paused_until: float = 0.0
    throttled_at: float | None = None
    strikes: int = 0
    cap: int | None = None
    credit: int = 0
    now: float = 0.0

    @property
    def pause_left(self) -> float:
        return max(0.0, self.paused_until - self.now)

    def budget(self, configured: int) -> int:
        """Connections the site may have now: the configured budget, or the lowered cap."""
        if self.cap is not None:
            return max(1, min(configured, self.cap))
        return configured


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
        if url and url.startswith(("postgresql", "postgres:")):
            return PostgresLedger(url, lease_seconds)
        if url and url.startswith("sqlite:///"):
            return SqliteLedger(url.removeprefix("sqlite:///"), lease_seconds)
        if url:
            raise ValueError(f"site ledger {url!r}: expected postgresql://… or sqlite:///path")
        return SqliteLedger(":memory:", lease_seconds)

    # -- what a backend provides --------------------------------------------------------------

    _marker = "?"

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
        for part in _chunks(sites):
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
        wants: Mapping[str, tuple[int, int]],
        *,
        fewer: Mapping[str, int] | None = None,
        renew: bool = False,
    ) -> tuple[dict[str, int], dict[str, SiteState], dict[str, int]]:
        """Set the holder's connections to each site (``wants``: site -> (wanted, configured
        budget)) to what it wants, within what the other holders' leases leave of the site's
        budget now, and never more while the site is paused; give back what ``fewer`` says
        (site -> connections to keep, fewer than held: nothing to check); with ``renew``, extend
        all its leases. One transaction. Returns the connections held per site (``wants``'s),
        the sites' states, and the fair shares of sites other holders wait for.

        A holder that wants more than it got keeps a row (at 0 connections if need be), so the
        others see it waiting: while one waits, no holder grows past a fair share (the budget
        over the holders that want the site), and each is told that share, to come down to as
        its requests end (the ledger never takes back connections in use).
        """
        sites = sorted(wants)
        with self._transaction(write=True) as cursor:
            now = self._now(cursor)
            self._give_back(cursor, holder, fewer or {})
            if not sites:
                if renew:
                    self._renew(cursor, holder, now)
                return {}, {}, {}
            self._lock_sites(cursor, sites)
            found = self._states(cursor, sites, now)
            others: dict[str, int] = {}
            mine: dict[str, int] = {}
            contenders: dict[str, int] = {}  # other holders that want the site
            waiting: dict[str, int] = {}  # other holders that want more than they hold
            for part in _chunks(sites):
                cursor.execute(
                    "SELECT site, holder, connections, wanted FROM mmc4_site_leases "
                    f"WHERE site IN ({self._marks(len(part))}) "
                    f"AND (expires_at > {self._marker} OR holder = {self._marker})",
                    [*part, now, holder],
                )
                for site, owner, connections, wanted in cursor.fetchall():
                    if owner == holder:
                        mine[site] = int(connections)
                    else:
                        others[site] = others.get(site, 0) + int(connections)
                        if wanted > 0:
                            contenders[site] = contenders.get(site, 0) + 1
                        if wanted > connections:
                            waiting[site] = waiting.get(site, 0) + 1
            held: dict[str, int] = {}
            states: dict[str, SiteState] = {}
            shares: dict[str, int] = {}
            rows, gone = [], []
            expires = now + self.lease_seconds
            for site in sites:
                wanted, budget = wants[site]
                state = states[site] = found.get(site) or SiteState(site, now=now)
                limit = state.budget(budget)
                target = min(wanted, max(0, limit - others.get(site, 0)))
                if waiting.get(site):  # another holder waits: no growth past a fair share
                    share = shares[site] = max(1, limit // (contenders.get(site, 0) + 1))
                    target = min(target, max(share, mine.get(site, 0)))
                if state.pause_left > 0:
                    target = min(target, mine.get(site, 0))  # no more while paused
                held[site] = target
                if wanted > 0:  # at 0 connections too: the others see it waiting
                    rows.append((holder, site, target, wanted, expires))
                elif site in mine:
                    gone.append(site)
            for part in _chunks(rows):
                values = ", ".join(f"({self._marks(5)})" for _ in part)
                cursor.execute(
                    "INSERT INTO mmc4_site_leases (holder, site, connections, wanted, expires_at) "
                    f"VALUES {values} ON CONFLICT (holder, site) DO UPDATE SET "
                    "connections = excluded.connections, wanted = excluded.wanted, "
                    "expires_at = excluded.expires_at",
                    [value for row in part for value in row],
                )
            self._drop(cursor, holder, gone)
            if renew:
                self._renew(cursor, holder, now)
        return held, states, shares

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
        for part in _chunks(sites):
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
    ) -> SiteState:
        """A 429 or 503 from ``site``: pause it for every run, lower its budget on repeats.

        A throttle answering a request sent before the site's previous throttle was recorded
        (``started_ago`` seconds ago) belongs to that episode: it may lengthen the pause to its
        own Retry-After but is not a new strike. A new episode pauses the site for Retry-After
        (capped) or, without one, ``backoff_base * 2**(strikes - 1)``; one that follows the
        previous episode within REPEAT_WINDOW_S also halves the site's budget.
        """
        with self._transaction(write=True) as cursor:
            now = self._now(cursor)
            self._lock_states(cursor, [site], now)
            state = self._states(cursor, [site], now)[site]
            sent_at = now - max(0.0, started_ago)
            paused_until, strikes, cap, credit = (
                state.paused_until,
                state.strikes,
                state.cap,
                state.credit,
            )
            throttled_at = state.throttled_at  # when the episode began: late answers keep it
            if throttled_at is not None and sent_at <= throttled_at:
                if retry_after is not None:
                    paused_until = max(paused_until, now + min(retry_after, pause_cap))
            else:
                throttled_at = now
                repeated = (
                    state.throttled_at is not None and now - state.throttled_at < REPEAT_WINDOW_S
                )
                strikes = strikes + 1 if repeated else 1
                if repeated:
                    cap, credit = max(1, state.budget(budget) // 2), 0
                if retry_after is not None:
                    pause = min(retry_after, pause_cap)
                else:
                    pause = min(pause_cap, backoff_base * 2 ** (strikes - 1))
                paused_until = max(paused_until, now + pause)
            cursor.execute(
                f"UPDATE mmc4_site_state SET paused_until = {self._marker}, "
                f"throttled_at = {self._marker}, strikes = {self._marker}, cap = {self._marker}, "
                f"credit = {self._marker}, changed_at = {self._marker} "
                f"WHERE site = {self._marker}",
                [paused_until, throttled_at, strikes, cap, credit, now, site],
            )
            return SiteState(site, paused_until, throttled_at, strikes, cap, credit, now)

    def credit(self, site: str, successes: int, budget: int) -> SiteState:
        """Successes at a lowered budget: it grows by one for every ``cap`` of them.

        Successes after the pause also end the escalation of pauses: the site answers again, so
        its next throttle (a one-off 503 among many images) pauses it for the base time, not
        twice the last; coming within REPEAT_WINDOW_S, it still halves the budget.
        """
        with self._transaction(write=True) as cursor:
            now = self._now(cursor)
            self._lock_states(cursor, [site], now)
            state = self._states(cursor, [site], now)[site]
            if state.cap is None:
                return state
            cap, credit = state.cap, state.credit + successes
            while cap < budget and credit >= cap:
                credit -= cap
                cap += 1
            new_cap = None if cap >= budget else cap
            strikes = 0 if successes > 0 and state.pause_left <= 0 else state.strikes
            cursor.execute(
                f"UPDATE mmc4_site_state SET cap = {self._marker}, credit = {self._marker}, "
                f"strikes = {self._marker}, changed_at = {self._marker} "
                f"WHERE site = {self._marker}",
                [new_cap, 0 if new_cap is None else credit, strikes, now, site],
            )
            return SiteState(
                site,
                state.paused_until,
                state.throttled_at,
                strikes,
                new_cap,
                credit,
                now,
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


def _chunks(items: list, size: int = _BATCH) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class SqliteLedger(SiteLedger):
    """A SQLite file shared by the runs of one machine (WAL: readers never wait on writers).

    Writers queue on an flock of a file beside it before they begin: SQLite's own busy handler
    sleeps and polls (1, 2, 5, 10 ms and up), so under contention every run's grants would wait
    for its naps; the kernel wakes the next writer the moment the lock is free.
    """

    def __init__(self, path: str, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds
        self._queue = None
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._queue = open(f"{path}.writers", "a+b")  # noqa: SIM115 - held for the life
        self.path = path
        self._connection = sqlite3.connect(
            path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        if path != ":memory:":
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=OFF")
        with self._transaction(write=True) as cursor:
            for statement in _SCHEMA:
                cursor.execute(statement)

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Cursor]:
        with self._lock, self._writers_queue(write):
            cursor = self._connection.cursor()
            cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield cursor
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            else:
                cursor.execute("COMMIT")
            finally:
                cursor.close()

    @contextlib.contextmanager
    def _writers_queue(self, write: bool) -> Iterator[None]:
        if not write or self._queue is None:
            yield
            return
        fcntl.flock(self._queue, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._queue, fcntl.LOCK_UN)

    def _now(self, cursor) -> float:
        return time.time()

    def _lock_states(self, cursor, sites: list[str], now: float) -> None:
        cursor.executemany(
            "INSERT INTO mmc4_site_state (site, changed_at) VALUES (?, ?) "
            "ON CONFLICT (site) DO NOTHING",
            [(site, now) for site in sites],
        )  # BEGIN IMMEDIATE already holds the database's write lock

    def _lock_sites(self, cursor, sites: list[str]) -> None:
        pass  # BEGIN IMMEDIATE already holds the database's write lock

    def close(self) -> None:
        self._connection.close()
        if self._queue is not None:
            self._queue.close()


class PostgresLedger(SiteLedger):
    """Tables in the Dagster instance's Postgres database, shared by runs on every machine."""

    _marker = "%s"

    def __init__(self, url: str, lease_seconds: float) -> None:
        import psycopg2

        self.lease_seconds = lease_seconds
        # Dagster's URLs name the SQLAlchemy driver (postgresql+psycopg2://); libpq does not.
        self._dsn = "postgresql://" + url.split("://", 1)[1]
        self._psycopg2 = psycopg2
        self._connection = None
        with self._transaction(write=True) as cursor:
            # One creator at a time: concurrent CREATE IF NOT EXISTS can collide in Postgres.
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext('mmc4_site_ledger'))")
            for statement in _SCHEMA:
                cursor.execute(statement)

    def _connect(self):
        if self._connection is None or self._connection.closed:
            try:
                # No wait for the WAL's flush at commit: a coordination table needs no
                # durability (after a crash, leases expire), and each run commits often.
                self._connection = self._psycopg2.connect(
                    self._dsn,
                    connect_timeout=10,
                    application_name=f"mmc4-sites-{os.getpid()}",
                    options="-c synchronous_commit=off",
                )
            except self._psycopg2.OperationalError as error:
                raise LedgerUnavailable(str(error).strip()) from None
        return self._connection

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator:
        connection = self._connect()
        errors = self._psycopg2
        try:
            with connection, connection.cursor() as cursor:  # commits, or rolls back on error
                yield cursor
        except (errors.OperationalError, errors.InterfaceError) as error:
            with contextlib.suppress(Exception):
                connection.close()
            self._connection = None
            raise LedgerUnavailable(str(error).strip()) from None

    def _now(self, cursor) -> float:
        cursor.execute("SELECT extract(epoch from clock_timestamp())::float8")
        return float(cursor.fetchone()[0])

    def _lock_states(self, cursor, sites: list[str], now: float) -> None:
        for site in sites:
            cursor.execute(
                "INSERT INTO mmc4_site_state (site, changed_at) VALUES (%s, %s) "
                "ON CONFLICT (site) DO NOTHING",
                [site, now],
            )
        cursor.execute(
            "SELECT site FROM mmc4_site_state WHERE site = ANY(%s) ORDER BY site FOR UPDATE",
            [sites],
        )

    def _lock_sites(self, cursor, sites: list[str]) -> None:
        # Advisory locks, taken in one order by every holder (no deadlock); a collision of two
        # sites' hashes only makes them wait for each other.
        cursor.execute(
            "SELECT pg_advisory_xact_lock(key) FROM "
            "(SELECT DISTINCT hashtext(site) AS key FROM unnest(%s::text[]) AS site) keys "
            "ORDER BY key",
            [sites],
        )
        cursor.fetchall()

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None
