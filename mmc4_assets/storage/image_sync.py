"""A shard's images between the scratch folder and an object store, during one download step.

Why: on an object store the step downloads into scratch; without this, a run killed after hours
would leave nothing behind, and the scratch disk would hold the whole shard. So images are
uploaded as they are written (every `interval` seconds, in the background, then dropped from
scratch), and the next run
adopts what a killed run uploaded: objects the previous status table does not vouch for are
fetched into scratch, where the engine validates them like files on disk instead of fetching them
from the web again. At the end: the last images, deletions of objects no ok row names, then the
status table (parquet, then tsv.gz), so a reader that trusts the table finds what it names.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from mmc4_assets.storage import layout
from mmc4_assets.storage.datastore import DataStore

log = logging.getLogger(__name__)


def vouched_sizes(previous: pd.DataFrame | None) -> dict[str, int]:
    """{path: bytes} of the ok rows of a status table."""
    if previous is None:
        return {}
    ok = previous[(previous["outcome"] == "ok") & previous["path"].notna()]
    ok = ok[ok["bytes"].notna()]
    return dict(zip(ok["path"].astype(str), ok["bytes"].astype(int), strict=True))


class ImageSync:
    """Keeps ``work/images/{shard}`` and the store's copy in step; see the module docstring."""

    def __init__(self, store: DataStore, work: Path, shard: int, interval: float = 30.0):
        self.store, self.work, self.shard, self.interval = store, work, int(shard), interval
        self.folder = layout.images_folder(shard)
        self.stored: dict[str, int] = store.listing(self.folder)
        self._same: dict[str, tuple[int, int]] = {}  # rel -> (size, mtime_ns) equal to its object
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def adopt_unrecorded(self, previous: pd.DataFrame | None) -> int:
        """Fetch the objects ``previous`` does not vouch for (same path and size); return how
        many. The engine then keeps those that are valid images and fetches the rest anew."""
        vouched = vouched_sizes(previous)
        rels = sorted(rel for rel, size in self.stored.items() if vouched.get(rel) != size)
        if rels:
            self.store.fetch(self.work, rels, known=True)
            with self._lock:
                for rel in rels:
                    self._same[rel] = self._signature(rel)
        return len(rels)

    def _signature(self, rel: str) -> tuple[int, int]:
        stat = os.stat(self.work / rel)
        return stat.st_size, stat.st_mtime_ns

    def _pending(self, only: set[str] | None = None) -> dict[str, tuple[int, int]]:
        """{rel: signature} of files under final names in scratch that differ from (or are not
        yet) their object, in name order."""
        pending = {}
        try:
            entries = sorted(os.scandir(self.work / self.folder), key=lambda entry: entry.name)
        except OSError:
            return pending
        for entry in entries:
            rel = f"{self.folder}/{entry.name}"
            if entry.name.startswith(".") or (only is not None and rel not in only):
                continue
            with contextlib.suppress(OSError):
                signature = self._signature(rel)
                if self._same.get(rel) != signature:
                    pending[rel] = signature
        return pending

    def upload_pending(self, only: set[str] | None = None, *, drop_local: bool = False) -> int:
        """Upload what changed in scratch since the last pass; return how many objects. With
        ``drop_local``, uploaded files leave scratch (the engine never reads a file it wrote)."""
        with self._lock:
            signatures = self._pending(only)
            self.store.publish(self.work, list(signatures))
            self._same.update(signatures)
            if drop_local:
                for rel, signature in signatures.items():
                    with contextlib.suppress(OSError):
                        if self._signature(rel) == signature:
                            (self.work / rel).unlink()
            return len(signatures)

    @contextlib.contextmanager
    def uploading(self) -> Iterator[ImageSync]:
        """Upload new images every ``interval`` seconds while the block runs."""
        thread = threading.Thread(target=self._loop, name="mmc4-image-sync", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.upload_pending(drop_local=True)
            except Exception as error:  # the final pass uploads (and raises) for real
                log.warning("background upload of shard %s failed: %s", self.shard, error)

    def finish(self, table: pd.DataFrame) -> None:
        """The last images, deletions of objects no ok row names (gone, or uploaded for an image
        that then failed), then the parquet table, then the tsv.gz."""
        ok_paths = set(vouched_sizes(table))
        self.upload_pending(only=ok_paths)
        with self._lock:
            self.store.delete(sorted((set(self.stored) | set(self._same)) - ok_paths))
        self.store.publish(self.work, [layout.status_parquet(self.shard)])
        self.store.publish(self.work, [layout.status_tsv(self.shard)])
