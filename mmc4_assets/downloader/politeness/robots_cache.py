"""robots.txt entries kept for 24 hours in the site ledger's database, where every run finds them.

Why there and not as files: an entry is worth keeping for 24 hours only (RFC 9309), so what
must be kept is the last day's entries, looked up by origin. One object per origin in the data
folder grew with every origin the crawl ever met (tens of millions over the corpus, a PUT each)
and was never pruned. The ledger's table (``mmc4_robots``) holds one row per origin fetched in
the last 24 hours, its body zlib-compressed, and each save deletes the older rows, so it is
bounded by a day's origins whatever the corpus. It is the database the runs already share
(SQLite beside the instance, or the instance's Postgres); a lone engine run without a ledger
keeps its entries for that run only. The record of what the crawl obeyed is each image's
outcome (``robots_disallowed``) in its shard's status table.

The old layout (``robots/{origin}.json`` in the data store) is still read, for origins the
table lacks, during the table's first 24 hours: after that no old entry can be fresh, and the
folder can be deleted (``docs/operating.md``).
"""

from __future__ import annotations

import logging
import sqlite3
import time
import zlib
from collections.abc import Iterable

from mmc4_assets.storage import DataStore, layout

from .ledger import LedgerUnavailable, SiteLedger, chunks
from .robots import ROBOTS_MAX_AGE_S, RobotsEntry

log = logging.getLogger(__name__)

# The row whose fetched_at is the table's creation: while it is younger than a day, origins the
# table lacks are looked up in the old layout too. ``migrate`` inserts it; pruning spares it.
SINCE = ""


class RobotsCache:
    """Read the fresh entries of a run's origins before it starts; keep what it fetched."""

    def __init__(self, ledger_url: str | None, old_store: DataStore | None = None) -> None:
        self.ledger_url = ledger_url
        self.old_store = old_store
        self._ledger: SiteLedger | None = None  # opened on first use, kept for the save

    def _open(self) -> SiteLedger:
        if self._ledger is None:
            self._ledger = SiteLedger.open(self.ledger_url)
        return self._ledger

    def load(self, origins: Iterable[str]) -> dict[str, RobotsEntry]:
        wanted = sorted(set(origins))
        now = time.time()
        try:
            # Without a ledger nothing outlives the run (its RobotsBook keeps the verdicts), and
            # the old layout has no table's creation to wait out.
            entries, since = self._read(wanted) if self.ledger_url else ({}, now)
        except (LedgerUnavailable, OSError, sqlite3.Error) as error:  # costs refetches, not the run
            log.warning("robots.txt cache unreadable (%s): fetching every robots.txt", error)
            return {}
        fresh = {origin: e for origin, e in entries.items() if e.fresh(now)}
        if self.old_store is not None and since is not None and now - since < ROBOTS_MAX_AGE_S:
            fresh.update(self._read_old([o for o in wanted if o not in fresh], now))
        return fresh

    def _read(self, origins: list[str]) -> tuple[dict[str, RobotsEntry], float | None]:
        ledger = self._open()
        mark = ledger._marker
        found: dict[str, RobotsEntry] = {}
        with ledger._transaction(write=False) as cursor:
            cursor.execute(f"SELECT fetched_at FROM mmc4_robots WHERE origin = {mark}", [SINCE])
            row = cursor.fetchone()
            for part in chunks(origins):
                cursor.execute(
                    "SELECT origin, fetched_at, status, body FROM mmc4_robots "
                    f"WHERE origin IN ({ledger._marks(len(part))})",
                    part,
                )
                for origin, fetched_at, status, body in cursor.fetchall():
                    try:
                        text = zlib.decompress(bytes(body)).decode() if body else ""
                    except (zlib.error, UnicodeDecodeError):
                        continue  # a damaged entry is fetched again
                    found[origin] = RobotsEntry(origin, float(fetched_at), int(status), text)
        return found, (float(row[0]) if row else None)

    def _read_old(self, origins: list[str], now: float) -> dict[str, RobotsEntry]:
        paths = {layout.robots_txt(origin): origin for origin in origins}
        try:
            found = self.old_store.read_many(paths)
        except OSError:
            return {}
        entries = {}
        for path, data in found.items():
            entry = RobotsEntry.from_json(data)
            if entry is not None and entry.origin == paths[path] and entry.fresh(now):
                entries[entry.origin] = entry
        return entries

    def save(self, entries: Iterable[RobotsEntry]) -> None:
        """Keep ``entries`` (one per origin, the latest wins) and forget those past 24 hours."""
        if not self.ledger_url:
            return
        rows = {
            e.origin: (e.origin, e.fetched_at, e.status, zlib.compress(e.body.encode()))
            for e in entries
        }
        try:
            ledger = self._open()
            mark = ledger._marker
            with ledger._transaction(write=True) as cursor:
                for part in chunks(sorted(rows.values())):
                    values = ", ".join(f"({ledger._marks(4)})" for _ in part)
                    cursor.execute(
                        "INSERT INTO mmc4_robots (origin, fetched_at, status, body) "
                        f"VALUES {values} ON CONFLICT (origin) DO UPDATE SET "
                        "fetched_at = excluded.fetched_at, status = excluded.status, "
                        "body = excluded.body",
                        [value for row in part for value in row],
                    )
                cursor.execute(
                    f"DELETE FROM mmc4_robots WHERE fetched_at < {mark} AND origin <> {mark}",
                    [time.time() - ROBOTS_MAX_AGE_S, SINCE],
                )
        except (LedgerUnavailable, OSError, sqlite3.Error) as error:
            log.warning("robots.txt cache not written (%s): the next run fetches them", error)

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None
