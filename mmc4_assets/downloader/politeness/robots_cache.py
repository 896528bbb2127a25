"""robots.txt entries kept in the data store (``robots/…json``) for 24 hours.

In the data store rather than in the shared ledger: the bodies run to 500 KiB each and to
millions of origins over the corpus, which a store of objects holds cheaply, and kept beside the
images they are the record of what the crawl obeyed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from mmc4_assets.storage import DataStore, layout

from .robots import RobotsEntry

log = logging.getLogger(__name__)


class RobotsCache:
    """Read the fresh entries of a run's origins before it starts; store what it fetched."""

    def __init__(self, store: DataStore) -> None:
        self.store = store

    def load(self, origins: Iterable[str]) -> dict[str, RobotsEntry]:
        paths = {layout.robots_txt(origin): origin for origin in set(origins)}
        try:
            found = self.store.read_many(paths)
        except OSError as error:  # an unreachable store costs refetches, not the run
            log.warning("robots.txt cache unreadable (%s): fetching every robots.txt", error)
            return {}
        now = time.time()
        entries = {}
        for path, data in found.items():
            entry = RobotsEntry.from_json(data)
            if entry is not None and entry.origin == paths[path] and entry.fresh(now):
                entries[entry.origin] = entry
        return entries

    def save(self, entries: Iterable[RobotsEntry]) -> None:
        contents = {layout.robots_txt(entry.origin): entry.to_json() for entry in entries}
        try:
            self.store.write_many(contents)
        except OSError as error:
            log.warning("robots.txt cache not written (%s): the next run fetches them", error)
