"""The data folder as a local path or an object store, behind one small interface.

A local root keeps today's code path: the workspace *is* the data folder, files are written to a
temporary name and renamed into place, and publishing is a no-op. A remote root (any fsspec URL)
has no rename: a step works in a local scratch folder laid out like the data folder (removed
after), fetches the inputs it needs into it, and publishes each output in one upload, so an object
appears whole when its upload succeeds (large files go as a multipart upload that s3fs aborts on
failure) and a killed step leaves nothing under a final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import psutil

from mmc4_assets.corpus.atomic import atomic_write

SCRATCH_ENV = "MMC4_SCRATCH_DIR"
"""Where remote roots' scratch folders go (default: the system temporary folder)."""


SCRATCH_PREFIX = "mmc4-scratch-"


def remove_dead_scratch(parent: Path) -> int:
    """Delete scratch folders of processes that no longer run (a killed run's leftovers); their
    names carry the pid. Returns how many went."""
    removed = 0
    try:
        entries = list(parent.glob(f"{SCRATCH_PREFIX}*-*"))
    except OSError:
        return 0
    for folder in entries:
        pid = folder.name.removeprefix(SCRATCH_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def open_store(location: str | os.PathLike) -> DataStore:
    """A store for MMC4_DATA_DIR: a plain path or file:// URL is local, any other URL remote."""
    text = os.fspath(location)
    if text.startswith("file://"):
        return LocalStore(Path(text.removeprefix("file://")))
    if "://" not in text:
        return LocalStore(Path(text))
    return RemoteStore(text)


class DataStore:
    """Operations on paths relative to the data folder ("raw_docs/42.jsonl")."""

    remote: bool = False
    location: str

    def url(self, rel: str) -> str:
        """Where ``rel`` lives, as a user would type it (a path or a URL)."""
        raise NotImplementedError

    def workspace(self) -> contextlib.AbstractContextManager[Path]:
        """A local folder laid out like the data folder, to read inputs and write outputs in."""
        raise NotImplementedError

    def fetch(self, work: Path, rels: Iterable[str], *, known: bool = False) -> list[str]:
        """Bring ``rels`` into ``work``; return those present there. ``known``: all exist."""
        raise NotImplementedError

    def publish(self, work: Path, rels: Iterable[str]) -> None:
        """Make ``work/rel`` the stored ``rel``, each whole or not at all."""
        raise NotImplementedError

    def delete(self, rels: Iterable[str]) -> None:
        raise NotImplementedError

    def read_many(self, rels: Iterable[str]) -> dict[str, bytes]:
        """The contents of those of ``rels`` that exist (small objects, read concurrently)."""
        raise NotImplementedError

    def write_many(self, contents: dict[str, bytes]) -> None:
        """Store small objects directly, each whole or not at all."""
        raise NotImplementedError

    def listing(self, folder: str, prefix: str = "") -> dict[str, int]:
        """{rel: size} of the files in ``folder`` whose name starts with ``prefix``."""
        raise NotImplementedError

    def stamp(self, folder: str) -> float | None:
        """A number that changes when a file of ``folder`` is added, removed or replaced (None:
        the folder is empty or absent). Cheap enough for the stale-image sensor."""
        raise NotImplementedError

    def scratch_note(self) -> str:
        """Which disk fills up when a step runs out of space."""
        raise NotImplementedError

    @contextlib.contextmanager
    def inputs(self, rels: Iterable[str]) -> Iterator[Path]:
        """A workspace holding those of ``rels`` that exist."""
        with self.workspace() as work:
            self.fetch(work, rels)
            yield work


class LocalStore(DataStore):
    """A folder on a local (or mounted) disk: the workspace is the data folder itself."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.location = str(self.root)

    def url(self, rel: str) -> str:
        return str(self.root / rel)

    @contextlib.contextmanager
    def workspace(self) -> Iterator[Path]:
        self.root.mkdir(parents=True, exist_ok=True)
        yield self.root

    def fetch(self, work: Path, rels: Iterable[str], *, known: bool = False) -> list[str]:
        return [rel for rel in rels if (self.root / rel).is_file()]

    def publish(self, work: Path, rels: Iterable[str]) -> None:
        """Nothing to do: every writer already renamed its file into place."""

    def delete(self, rels: Iterable[str]) -> None:
        for rel in rels:
            (self.root / rel).unlink(missing_ok=True)

    def read_many(self, rels: Iterable[str]) -> dict[str, bytes]:
        found = {}
        for rel in rels:
            try:
                found[rel] = (self.root / rel).read_bytes()
            except OSError:
                pass
        return found

    def write_many(self, contents: dict[str, bytes]) -> None:
        for rel, data in contents.items():
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path, "wb") as handle:
                handle.write(data)

    def listing(self, folder: str, prefix: str = "") -> dict[str, int]:
        found: dict[str, int] = {}
        try:
            entries = os.scandir(self.root / folder)
        except OSError:
            return found
        with entries:
            for entry in entries:
                name = entry.name
                if name.startswith(prefix) and not name.startswith(".") and entry.is_file():
                    found[f"{folder}/{name}"] = entry.stat().st_size
        return found

    def stamp(self, folder: str) -> float | None:
        """The folder's mtime: it moves whenever a file in it is added, renamed or deleted."""
        try:
            return os.stat(self.root / folder).st_mtime
        except OSError:
            return None

    def scratch_note(self) -> str:
        return f"the data folder {self.root}"


class RemoteStore(DataStore):
    """An fsspec object store (s3fs for s3://, gcsfs for gs://, adlfs for az://)."""

    remote = True

    def __init__(self, location: str) -> None:
        from fsspec.core import url_to_fs

        self.location = location.rstrip("/")
        # Listings are never cached: other runs change the bucket under a long-lived process.
        self.fs, path = url_to_fs(self.location, use_listings_cache=False)
        self.base = path.rstrip("/")

    def _key(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def url(self, rel: str) -> str:
        return f"{self.location}/{rel}"

    @contextlib.contextmanager
    def workspace(self) -> Iterator[Path]:
        parent = Path(os.environ.get(SCRATCH_ENV) or tempfile.gettempdir())
        parent.mkdir(parents=True, exist_ok=True)
        remove_dead_scratch(parent)
        work = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=parent))
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def fetch(self, work: Path, rels: Iterable[str], *, known: bool = False) -> list[str]:
        rels = list(rels)
        for rel in rels:
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
        if known and rels:  # one batched, concurrent download
            self.fs.get([self._key(rel) for rel in rels], [str(work / rel) for rel in rels])
            return rels
        present = []
        for rel in rels:
            try:
                self.fs.get_file(self._key(rel), str(work / rel))
                present.append(rel)
            except FileNotFoundError:
                (work / rel).unlink(missing_ok=True)
        return present

    def publish(self, work: Path, rels: Iterable[str]) -> None:
        rels = list(rels)
        if rels:  # one upload per object, sent concurrently
            self.fs.put([str(work / rel) for rel in rels], [self._key(rel) for rel in rels])

    def delete(self, rels: Iterable[str]) -> None:
        keys = [self._key(rel) for rel in rels]
        if keys:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(keys)

    def read_many(self, rels: Iterable[str]) -> dict[str, bytes]:
        keys = {self._key(rel): rel for rel in rels}
        if not keys:
            return {}
        found = self.fs.cat(list(keys), on_error="omit")  # one concurrent batch
        return {keys[key.strip("/")]: data for key, data in found.items() if key.strip("/") in keys}

    def write_many(self, contents: dict[str, bytes]) -> None:
        if contents:  # one single-part upload per object, sent concurrently
            self.fs.pipe({self._key(rel): data for rel, data in contents.items()})

    def _entries(self, folder: str, prefix: str) -> dict[str, dict]:
        path = self._key(folder)
        try:
            try:
                found = self.fs.find(path, detail=True, prefix=prefix) if prefix else None
            except TypeError:  # a filesystem whose find() has no prefix
                found = None
            if found is None:
                found = self.fs.find(path, detail=True)
        except FileNotFoundError:
            return {}
        start = len(self.base) + 1
        entries = {}
        for key, info in found.items():
            rel = key.strip("/")[start:] if key.strip("/").startswith(self.base) else key
            name = rel.rsplit("/", 1)[-1]
            if info.get("type", "file") == "file" and name.startswith(prefix):
                entries[rel] = info
        return entries

    def listing(self, folder: str, prefix: str = "") -> dict[str, int]:
        entries = self._entries(folder, prefix)
        return {rel: int(info.get("size") or 0) for rel, info in entries.items()}

    def stamp(self, folder: str) -> float | None:
        """A 48-bit digest of the folder's listing (names, sizes, ETags), exact as a float."""
        entries = self._entries(folder, "")
        if not entries:
            return None
        digest = hashlib.sha1()
        for rel in sorted(entries):
            info = entries[rel]
            etag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or ""
            digest.update(f"{rel}\0{info.get('size')}\0{etag}\n".encode())
        return float(int(digest.hexdigest()[:12], 16))

    def scratch_note(self) -> str:
        scratch = os.environ.get(SCRATCH_ENV) or tempfile.gettempdir()
        return f"the scratch disk {scratch} (data on {self.location})"
