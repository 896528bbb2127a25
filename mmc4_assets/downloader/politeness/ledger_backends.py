"""The site ledger's two databases: a SQLite file for the runs of one machine, the Dagster
instance's Postgres for runs on many. Each provides transactions, the database clock and the
locks ``SiteLedger`` (ledger.py) takes; the ledger's SQL and its rules are the same on both.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .ledger import LedgerUnavailable, SiteLedger, migrate


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
            migrate(cursor)

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
    _skip_locked = " FOR UPDATE SKIP LOCKED"

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
            migrate(cursor)

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
