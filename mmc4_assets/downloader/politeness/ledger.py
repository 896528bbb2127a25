"""The site ledger: connection slots and throttle state per site, shared by every run.

Where it lives is where the deployment already keeps shared state: the Dagster instance's
Postgres when the instance is on Postgres (runs on many machines), a SQLite file beside the
instance otherwise (every CLI and daemon run on one machine), or memory for a lone engine run.

Slots, not counters: a site's budget of N connections is the slot numbers 0..N-1, and a run
holds a slot by owning its row (primary key ``(site, slot)``), so two runs can never hold one
slot, whatever the interleaving, without locks or counters to keep in step. A row carries an
expiry that its holder renews; a killed run's slots are free once they expire. A lowered
budget (after repeated throttling) or a Crawl-delay simply makes the higher slot numbers
unusable: holders give them back at their next renewal.

Throttling is a site's state: ``paused_until`` (no run sends a request before it), the number
of throttles in a row, a lowered budget (``cap``) that grows back by one for every ``cap``
successes, and a Crawl-delay. Times are the database's clock, so machines need not agree.
"""

from __future__ import annotations

import contextlib
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
    """CREATE TABLE IF NOT EXISTS mmc4_site_slots (
        site TEXT NOT NULL,
        slot INTEGER NOT NULL,
        holder TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (site, slot))""",
    "CREATE INDEX IF NOT EXISTS mmc4_site_slots_holder ON mmc4_site_slots (holder)",
    """CREATE TABLE IF NOT EXISTS mmc4_site_state (
        site TEXT PRIMARY KEY,
        paused_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        throttled_at DOUBLE PRECISION,
        strikes INTEGER NOT NULL DEFAULT 0,
        cap INTEGER,
        credit INTEGER NOT NULL DEFAULT 0,
        crawl_delay DOUBLE PRECISION,
        changed_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS mmc4_site_state_changed ON mmc4_site_state (changed_at)",
)
_STATE_COLUMNS = "site, paused_until, throttled_at, strikes, cap, credit, crawl_delay"


@dataclass(frozen=True)
class SiteState:
    """What every run must respect about one site, as seen at ``now`` (database clock)."""

    site: str
    paused_until: float = 0.0
    throttled_at: float | None = None
    strikes: int = 0
    cap: int | None = None
    credit: int = 0
    crawl_delay: float | None = None
    now: float = 0.0

    @property
    def pause_left(self) -> float:
        return max(0.0, self.paused_until - self.now)

    def budget(self, configured: int) -> int:
        """Connections the site may have now: one under a Crawl-delay, else the lowered cap."""
        if self.crawl_delay:
            return 1
        if self.cap is not None:
            return max(1, min(configured, self.cap))
        return configured


def _state(row, now: float) -> SiteState:
    site, paused_until, throttled_at, strikes, cap, credit, crawl_delay = row
    return SiteState(
        site, float(paused_until), throttled_at, int(strikes), cap, int(credit), crawl_delay, now
    )


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

    def acquire(
        self, holder: str, wants: Mapping[str, tuple[int, int]]
    ) -> tuple[dict[str, list[int]], dict[str, SiteState]]:
        """Take up to ``more`` free slots of each site (``wants``: site -> (more, budget)).

        Returns the slots taken per site and the sites' states (paused sites get none).
        """
        sites = sorted(wants)
        with self._transaction(write=True) as cursor:
            now = self._now(cursor)
            found = self._states(cursor, sites, now)
            states = {site: found.get(site) or SiteState(site, now=now) for site in sites}
            taken: set[tuple[str, int]] = set()
            for part in _chunks(sites):
                cursor.execute(
                    "SELECT site, slot FROM mmc4_site_slots "
                    f"WHERE site IN ({self._marks(len(part))}) AND expires_at > {self._marker}",
                    [*part, now],
                )
                taken.update((site, int(slot)) for site, slot in cursor.fetchall())
            rows: list[tuple[str, int]] = []
            for site in sites:
                more, budget = wants[site]
                state = states[site]
                if more <= 0 or state.pause_left > 0:
                    continue
                free = [n for n in range(state.budget(budget)) if (site, n) not in taken]
                rows.extend((site, n) for n in free[:more])
            granted: dict[str, list[int]] = {}
            expires = now + self.lease_seconds
            for part in _chunks(rows):
                values = ", ".join(f"({self._marks(4)})" for _ in part)
                cursor.execute(
                    "INSERT INTO mmc4_site_slots (site, slot, holder, expires_at) "
                    f"VALUES {values} ON CONFLICT (site, slot) DO UPDATE SET "
                    "holder = excluded.holder, expires_at = excluded.expires_at "
                    f"WHERE mmc4_site_slots.expires_at <= {self._marker} RETURNING site, slot",
                    [v for site, slot in part for v in (site, slot, holder, expires)] + [now],
                )
                for site, slot in cursor.fetchall():
                    granted.setdefault(site, []).append(int(slot))
        return granted, states

    def release(self, holder: str, slots: Mapping[str, Iterable[int]]) -> None:
        """Give back these slots (a site done, or fewer images left than slots held)."""
        pairs = [(site, slot) for site, numbers in slots.items() for slot in numbers]
        if not pairs:
            return
        with self._transaction(write=True) as cursor:
            for part in _chunks(pairs):
                clause = " OR ".join(
                    f"(site = {self._marker} AND slot = {self._marker})" for _ in part
                )
                cursor.execute(
                    f"DELETE FROM mmc4_site_slots WHERE holder = {self._marker} AND ({clause})",
                    [holder, *(v for pair in part for v in pair)],
                )

    def release_all(self, holder: str) -> None:
        with self._transaction(write=True) as cursor:
            cursor.execute(f"DELETE FROM mmc4_site_slots WHERE holder = {self._marker}", [holder])

    def renew(
        self, holder: str, budgets: Mapping[str, int]
    ) -> tuple[dict[str, list[int]], dict[str, SiteState]]:
        """Extend the holder's slots; drop those above their site's budget now (``budgets``:
        the configured budget per site). Returns the slots still held and their sites' states."""
        with self._transaction(write=True) as cursor:
            now = self._now(cursor)
            cursor.execute(
                f"UPDATE mmc4_site_slots SET expires_at = {self._marker} "
                f"WHERE holder = {self._marker} RETURNING site, slot",
                [now + self.lease_seconds, holder],
            )
            held: dict[str, list[int]] = {}
            for site, slot in cursor.fetchall():
                held.setdefault(site, []).append(int(slot))
            found = self._states(cursor, sorted(held), now)
            states = {site: found.get(site) or SiteState(site, now=now) for site in held}
            surplus = {}
            for site, slots in held.items():
                limit = states[site].budget(budgets.get(site, max(slots) + 1))
                over = [slot for slot in slots if slot >= limit]
                if over:
                    surplus[site] = over
                    held[site] = [slot for slot in slots if slot < limit]
        if surplus:
            self.release(holder, surplus)
        return {site: slots for site, slots in held.items() if slots}, states

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
            return SiteState(
                site, paused_until, throttled_at, strikes, cap, credit, state.crawl_delay, now
            )

    def credit(self, site: str, successes: int, budget: int) -> SiteState:
        """Successes at a lowered budget: it grows by one for every ``cap`` of them."""
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
            cursor.execute(
                f"UPDATE mmc4_site_state SET cap = {self._marker}, credit = {self._marker}, "
                f"changed_at = {self._marker} WHERE site = {self._marker}",
                [new_cap, 0 if new_cap is None else credit, now, site],
            )
            return SiteState(
                site,
                state.paused_until,
                state.throttled_at,
                state.strikes,
                new_cap,
                credit,
                state.crawl_delay,
                now,
            )

    def set_crawl_delay(self, site: str, delay: float | None) -> None:
        """Record the site's robots.txt Crawl-delay (None: it has none)."""
        with self._transaction(write=True) as cursor:
            now = self._now(cursor)
            self._lock_states(cursor, [site], now)
            cursor.execute(
                f"UPDATE mmc4_site_state SET crawl_delay = {self._marker}, "
                f"changed_at = {self._marker} WHERE site = {self._marker}",
                [delay, now, site],
            )

    def rest(self, site: str, seconds: float) -> None:
        """No run may start a request to ``site`` for ``seconds`` (Crawl-delay spacing)."""
        with self._transaction(write=True) as cursor:
            now = self._now(cursor)
            self._lock_states(cursor, [site], now)
            cursor.execute(
                f"UPDATE mmc4_site_state SET paused_until = {self._marker}, "
                f"changed_at = {self._marker} WHERE site = {self._marker} "
                f"AND paused_until < {self._marker}",
                [now + seconds, now, site, now + seconds],
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
    """A SQLite file shared by the runs of one machine (WAL: readers never wait on writers)."""

    def __init__(self, path: str, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._connection = sqlite3.connect(
            path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        if path != ":memory:":
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")
        with self._transaction(write=True) as cursor:
            for statement in _SCHEMA:
                cursor.execute(statement)

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Cursor]:
        with self._lock:
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

    def _now(self, cursor) -> float:
        return time.time()

    def _lock_states(self, cursor, sites: list[str], now: float) -> None:
        cursor.executemany(
            "INSERT INTO mmc4_site_state (site, changed_at) VALUES (?, ?) "
            "ON CONFLICT (site) DO NOTHING",
            [(site, now) for site in sites],
        )  # BEGIN IMMEDIATE already holds the database's write lock

    def close(self) -> None:
        self._connection.close()


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
                self._connection = self._psycopg2.connect(
                    self._dsn, connect_timeout=10, application_name=f"mmc4-sites-{os.getpid()}"
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

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None
