"""Download one shard's images: schedule, fetch, validate, store, and account for every image.

Threads do the work (network waits and Pillow decoding both release the GIL). A scheduler hands
each free thread an image whose host is below its connection limit, round-robin over hosts, so
a slow or rate-limiting host holds at most ``per_host`` threads while the rest keep moving. Only
one body per thread is ever in memory, and at most one decode per CPU runs at once. Every image
ends with exactly one status row.

Outcomes beyond the fetch: a target that we held (previous row ok) answering 404/410 is
``gone`` and our copy is deleted; a transient failure (timeout, connection error, 429, 5xx) while
refreshing a held copy keeps the copy and its row (``error`` notes the failed refresh); any other
non-ok outcome deletes whatever file stood for the image.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from mmc4_assets.corpus.atomic import atomic_write, remove_stale_temporaries
from mmc4_assets.corpus.status import ALL_COLUMNS, normalize_status, read_status

from ..fetching.client import FetchOptions, FetchResult, HttpFetcher, InvalidUrl, check_url, host_of
from ..imaging.prepare import ImageRejected, prepare_image, verify_file_bytes
from ..refs import ImageRef
from ..storing.names import NameAllocator, contained_path


@dataclass(frozen=True)
class DownloadSettings:
    """How to fetch: concurrency, time and size limits, retries, identity and policy.

    The HTTP knobs default to FetchOptions' values, so each default is written once.
    """

    max_concurrency: int = 64
    per_host: int = FetchOptions.per_host
    connect_timeout: float = FetchOptions.connect_timeout
    read_timeout: float = FetchOptions.read_timeout
    total_deadline: float = FetchOptions.total_deadline
    max_bytes: int = FetchOptions.max_bytes
    max_pixels: int = 100_000_000
    max_redirects: int = FetchOptions.max_redirects
    max_attempts: int = FetchOptions.max_attempts
    backoff_base: float = FetchOptions.backoff_base
    backoff_max: float = FetchOptions.backoff_max
    retry_after_cap: float = FetchOptions.retry_after_cap
    user_agent: str = FetchOptions.user_agent
    respect_opt_out: bool = FetchOptions.respect_opt_out
    allow_private_networks: bool = FetchOptions.allow_private_networks
    # Private networks reachable even when allow_private_networks is off (e.g. "10.1.2.0/24").
    allowed_networks: tuple[str, ...] = FetchOptions.allowed_networks
    max_side: int = 800
    # Images decoded at once (0: one per CPU): more buys no speed, only memory.
    decode_workers: int = 0

    def fetch_options(self) -> FetchOptions:
        names = {f.name for f in fields(FetchOptions)}
        return FetchOptions(**{k: v for k, v in vars(self).items() if k in names})


@dataclass
class ProgressInfo:
    """A progress snapshot for the callback."""

    done: int
    total: int
    outcomes: dict[str, int]
    elapsed: float
    images_per_second: float
    bytes: int


@dataclass
class _Job:
    position: int
    ref: ImageRef
    name: str
    path: Path
    relpath: str
    previous: dict | None
    conditional: bool = False
    have_copy: bool = False  # a valid copy is on disk (refresh of a target)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_malloc_tuned = False


def _tune_malloc() -> None:
    """Keep glibc from hoarding freed image buffers across many threads (Linux only).

    Dozens of threads allocating and freeing bodies of a few hundred KB make glibc grow one
    arena per thread and raise its mmap threshold, so freed memory is kept, not returned: peak
    RSS doubles. A fixed 64 KB mmap threshold (bodies and pixels go straight back to the OS)
    and four arenas keep it flat.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_ARENA_MAX, 4)
        libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 1024 * 1024)
    except (OSError, AttributeError):
        pass


def _now() -> datetime:
    return datetime.now(UTC)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _previous_rows(previous: pd.DataFrame | None) -> dict[tuple[int, int], dict]:
    if previous is None or len(previous) == 0:
        return {}
    table = normalize_status(previous)
    rows = table.astype(object).where(table.notna(), None).to_dict("records")
    return {(int(r["doc"]), int(r["index"])): r for r in rows}


def download_shard(
    refs: Iterable[ImageRef],
    *,
    data_dir: Path,
    shard: int,
    settings: DownloadSettings,
    previous: pd.DataFrame | None = None,
    targets: set[tuple[int, int]] | None = None,
    progress: Callable[[ProgressInfo], None] | None = None,
    progress_interval: float = 2.0,
) -> pd.DataFrame:
    """Download the shard's images into ``data_dir/images/{shard}``; return its status table.

    Resumable: images already valid on disk are not fetched again (their row is carried over,
    or rebuilt from the file). ``previous`` defaults to the shard's status file, if any. With
    ``targets``, only those (doc, index) images are attempted (conditionally when we hold a valid
    copy with validators); every other image keeps its previous row.
    """
    _tune_malloc()
    run = _ShardRun(Path(data_dir), int(shard), settings, progress, progress_interval)
    if previous is None:
        previous = read_status(data_dir, shard)
    return run.execute(list(refs), _previous_rows(previous), targets)


class _ShardRun:
    """State of one download_shard call."""

    def __init__(self, data_dir, shard, settings, progress, progress_interval) -> None:
        self.data_dir = data_dir
        self.shard = shard
        self.settings = settings
        self.folder = data_dir / "images" / str(shard)
        self.progress = progress
        self.progress_interval = progress_interval
        self._lock = threading.Lock()
        self._outcomes: Counter[str] = Counter()
        self._done = 0
        self._bytes = 0
        self._total = 0
        self._started = time.monotonic()
        self._failure: BaseException | None = None
        slots = settings.decode_workers or (os.cpu_count() or 2)
        self._decode_slots = threading.BoundedSemaphore(max(1, slots))

    # -- planning ---------------------------------------------------------------------------

    def execute(self, refs, previous, targets) -> pd.DataFrame:
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.folder)
        self._total = len(refs)
        rows: list[dict | None] = [None] * len(refs)
        allocator = NameAllocator()
        jobs: list[_Job] = []
        for position, ref in enumerate(refs):
            name = allocator.allocate(ref.image_name, ref.url, ref.doc, ref.index)
            path = contained_path(self.folder, name)
            old = previous.get((ref.doc, ref.index))
            if old is not None and (old["url"] != ref.url or old["image_name"] != ref.image_name):
                old = None  # the shard changed under us: that row describes another image
            if targets is not None and (ref.doc, ref.index) not in targets and old is not None:
                self._finish(rows, position, old)
                continue
            job = _Job(position, ref, name, path, f"images/{self.shard}/{name}", old)
            try:
                check_url(ref.url)
            except InvalidUrl as error:
                self._finish(rows, position, self._failure_row(job, "invalid_url", str(error)))
                self._remove(job)
                continue
            jobs.append(job)
        self._report()
        network = self._check_local_copies(jobs, rows, refresh=targets is not None)
        self._fetch_all(network, rows)
        if self._failure is not None:
            raise self._failure
        self._report()
        return normalize_status(pd.DataFrame.from_records(rows, columns=ALL_COLUMNS))

    def _check_local_copies(self, jobs, rows, *, refresh: bool) -> list[_Job]:
        """Carry over valid files (full mode) or prepare conditional refreshes (targets mode)."""
        on_disk = [job for job in jobs if job.path.is_file()]
        if not on_disk:
            return jobs
        settings = self.settings

        def check(job: _Job) -> dict | None:
            data = job.path.read_bytes()
            old = job.previous
            if (
                old is not None
                and old["outcome"] == "ok"
                and old.get("path") == job.relpath
                and old.get("sha256") == _sha256(data)
            ):
                return old
            described = verify_file_bytes(
                data, max_side=settings.max_side, max_pixels=settings.max_pixels
            )
            if described is None:
                return None
            row = self._base_row(job, attempts=0)
            row.update(
                outcome="ok",
                path=job.relpath,
                mimetype=described.mimetype,
                bytes=len(data),
                width=described.width,
                height=described.height,
                original_width=(old or {}).get("original_width") or described.width,
                original_height=(old or {}).get("original_height") or described.height,
                sha256=_sha256(data),
                http_status=(old or {}).get("http_status"),
                etag=(old or {}).get("etag"),
                last_modified=(old or {}).get("last_modified"),
                fetched_at=datetime.fromtimestamp(job.path.stat().st_mtime, UTC),
            )
            return row

        cpus = os.cpu_count() or 2
        workers = max(1, min(self.settings.max_concurrency, len(on_disk), 2 * cpus))
        with ThreadPoolExecutor(workers, thread_name_prefix="mmc4-verify") as pool:
            verdicts = dict(zip((id(j) for j in on_disk), pool.map(check, on_disk), strict=True))
        remaining = []
        for job in jobs:
            row = verdicts.get(id(job))
            if row is None:
                remaining.append(job)
            elif not refresh:
                self._finish(rows, job.position, row)
            else:
                job.have_copy = True
                job.previous = row
                job.conditional = bool(row.get("etag") or row.get("last_modified"))
                remaining.append(job)
        return remaining

    # -- fetching ---------------------------------------------------------------------------

    def _fetch_all(self, jobs: list[_Job], rows: list) -> None:
        if not jobs:
            return
        scheduler = _HostScheduler(self.settings.per_host)
        for job in jobs:
            scheduler.add(host_of(job.ref.url), job)
        fetcher = HttpFetcher(self.settings.fetch_options())
        stop = threading.Event()

        def worker() -> None:
            while not stop.is_set():
                taken = scheduler.take()
                if taken is None:
                    return
                host, job = taken
                try:
                    try:
                        result = self._fetch(fetcher, job)
                    finally:
                        scheduler.release(host)
                    row = self._store(job, result)
                    self._finish(rows, job.position, row)
                except BaseException as error:  # noqa: BLE001 - surfaced in the caller
                    with self._lock:
                        self._failure = self._failure or error
                    stop.set()
                    scheduler.abort()
                    return
                finally:
                    scheduler.complete()

        threads = [
            threading.Thread(target=worker, name=f"mmc4-fetch-{i}", daemon=True)
            for i in range(max(1, min(self.settings.max_concurrency, len(jobs))))
        ]
        for thread in threads:
            thread.start()
        try:
            while not scheduler.wait_done(self.progress_interval):
                self._report()
        finally:
            stop.set()
            scheduler.abort()  # a no-op after a full run; frees idle workers after an error
            for thread in threads:
                thread.join()
            fetcher.close()

    def _fetch(self, fetcher: HttpFetcher, job: _Job) -> FetchResult:
        old = job.previous if job.conditional else None
        return fetcher.fetch(
            job.ref.url,
            etag=(old or {}).get("etag"),
            last_modified=(old or {}).get("last_modified"),
        )

    # -- storing ----------------------------------------------------------------------------

    def _store(self, job: _Job, result: FetchResult) -> dict:
        """Turn a fetch result into the image's row, writing or deleting its file."""
        settings = self.settings
        old = job.previous
        had_ok = old is not None and old.get("outcome") == "ok"
        if result.outcome == "not_modified" and job.have_copy:
            row = dict(old)
            row.update(
                fetched_at=_now(),
                http_status=304,
                attempts=result.attempts,
                error=None,
                etag=result.etag or old.get("etag"),
                last_modified=result.last_modified or old.get("last_modified"),
            )
            return row
        if result.outcome == "not_modified":  # 304 without a copy to keep: never asked for it
            result.outcome, result.error = "http_error", "unexpected 304"
        if result.outcome is None:
            with self._lock:
                self._bytes += len(result.body or b"")
            try:
                with self._decode_slots:
                    prepared = prepare_image(
                        result.body, max_side=settings.max_side, max_pixels=settings.max_pixels
                    )
            except ImageRejected as rejected:
                row = self._failure_row(job, rejected.outcome, str(rejected), result)
                row["mimetype"] = rejected.mimetype
                self._remove(job)
                return row
            finally:
                result.body = None
            with atomic_write(job.path, "wb") as handle:
                handle.write(prepared.data)
            row = self._base_row(job, result.attempts)
            row.update(
                outcome="ok",
                http_status=result.http_status,
                path=job.relpath,
                mimetype=prepared.mimetype,
                bytes=len(prepared.data),
                width=prepared.width,
                height=prepared.height,
                original_width=prepared.original_width,
                original_height=prepared.original_height,
                sha256=_sha256(prepared.data),
                etag=result.etag,
                last_modified=result.last_modified,
            )
            return row
        if had_ok and result.http_status in (404, 410):
            self._remove(job)
            return self._failure_row(job, "gone", result.error, result)
        if job.have_copy and (
            result.outcome in ("timeout", "connection_error", "rate_limited")
            or (result.outcome == "http_error" and (result.http_status or 0) >= 500)
        ):
            row = dict(old)  # a passing failure must not cost us a good copy
            row["error"] = f"refresh failed: {result.outcome}: {result.error}"
            return row
        self._remove(job)
        return self._failure_row(job, result.outcome, result.error, result)

    def _base_row(self, job: _Job, attempts: int) -> dict:
        ref = job.ref
        return {
            "shard": self.shard,
            "doc": ref.doc,
            "index": ref.index,
            "image_name": ref.image_name,
            "url": ref.url,
            "outcome": None,
            "http_status": None,
            "error": None,
            "path": None,
            "mimetype": None,
            "bytes": None,
            "width": None,
            "height": None,
            "sha256": None,
            "etag": None,
            "last_modified": None,
            "fetched_at": _now(),
            "attempts": attempts,
            "host": host_of(ref.url),
            "original_width": None,
            "original_height": None,
        }

    def _failure_row(self, job, outcome, error, result: FetchResult | None = None) -> dict:
        row = self._base_row(job, result.attempts if result else 0)
        row.update(outcome=outcome, error=error)
        if result is not None:
            row.update(http_status=result.http_status)
        return row

    def _remove(self, job: _Job) -> None:
        """No file may stand for an image whose row is not ok."""
        try:
            job.path.unlink()
        except FileNotFoundError:
            pass

    # -- accounting -------------------------------------------------------------------------

    def _finish(self, rows: list, position: int, row: dict) -> None:
        # A tuple, not the dict: 25k long-lived dicts scattered among body buffers fragment the
        # heap; tuples are a third the size and live in Python's own small-object arenas.
        rows[position] = tuple(row.get(name) for name in ALL_COLUMNS)
        with self._lock:
            self._done += 1
            self._outcomes[row["outcome"]] += 1

    def _report(self) -> None:
        if self.progress is None:
            return
        with self._lock:
            elapsed = time.monotonic() - self._started
            info = ProgressInfo(
                done=self._done,
                total=self._total,
                outcomes=dict(self._outcomes),
                elapsed=elapsed,
                images_per_second=self._done / elapsed if elapsed > 0 else 0.0,
                bytes=self._bytes,
            )
        self.progress(info)


class _HostScheduler:
    """Hands out jobs round-robin over hosts, never more than ``per_host`` at once per host."""

    def __init__(self, per_host: int) -> None:
        self._per_host = max(1, per_host)
        self._cond = threading.Condition()
        self._pending: dict[str, deque] = {}
        self._active: Counter[str] = Counter()
        self._ready: deque[str] = deque()
        self._queued: set[str] = set()
        self._remaining = 0
        self._waiting_jobs = 0
        self._aborted = False
        self._finished = threading.Event()

    def add(self, host: str, job) -> None:
        with self._cond:
            self._pending.setdefault(host, deque()).append(job)
            self._remaining += 1
            self._waiting_jobs += 1
            if host not in self._queued:
                self._queued.add(host)
                self._ready.append(host)

    def take(self):
        with self._cond:
            while True:
                if self._aborted:
                    return None
                if self._ready:
                    host = self._ready.popleft()
                    job = self._pending[host].popleft()
                    self._waiting_jobs -= 1
                    self._active[host] += 1
                    if self._pending[host] and self._active[host] < self._per_host:
                        self._ready.append(host)
                        self._cond.notify()
                    else:
                        self._queued.discard(host)
                    return host, job
                if not self._waiting_jobs:
                    return None
                self._cond.wait()

    def release(self, host: str) -> None:
        with self._cond:
            self._active[host] -= 1
            if self._pending.get(host) and host not in self._queued:
                self._queued.add(host)
                self._ready.append(host)
                self._cond.notify()

    def complete(self) -> None:
        with self._cond:
            self._remaining -= 1
            if self._remaining <= 0:
                self._finished.set()
                self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._finished.set()
            self._cond.notify_all()

    def wait_done(self, timeout: float) -> bool:
        return self._finished.wait(timeout)


__all__ = ["DownloadSettings", "ProgressInfo", "download_shard"]
