"""Download one shard's images: plan, fetch, validate, store, and account for every image.

Planning (names, previous rows, targets, valid copies already on disk) happens here; the fetch
itself runs in fetch worker processes that each own a share of the shard's hosts, or in this
process's own fetch loop for small shards. Every image ends with exactly one status row, and no
run outlives its images' deadlines.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from mmc4_assets.corpus.atomic import remove_stale_temporaries
from mmc4_assets.corpus.status import ALL_COLUMNS, normalize_status, read_status
from mmc4_assets.storage import DataStore, LocalStore

from ..fetching.urls import InvalidUrl, check_url, host_of
from ..imaging.phash import from_thumbnail
from ..politeness import COUNTERS
from ..politeness.broker import SiteBroker, local_link, open_broker
from ..politeness.robots import origin_of
from ..politeness.robots_cache import RobotsCache
from ..politeness.sites import site_of
from ..refs import ImageRef
from ..settings import DownloadSettings, tls_context
from ..storing.duplicates import duplicate_of
from ..storing.names import NameAllocator, contained_path
from ..storing.standins import mark_standins
from ..storing.store import ImageJob, check_local_copy, failure_row, held_copy, remove_file
from .fetch_loop import FetchLoop, ProgressInfo
from .fetch_workers import fetch_in_workers, share_of, split_by_site, worker_count
from .process_tuning import tune_memory

__all__ = ["ProgressInfo", "download_shard"]


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
    held: Mapping[str, int] | None = None,
    robots_store: DataStore | None = None,
    stats: dict | None = None,
    known_standins: Collection[str] = frozenset(),
) -> pd.DataFrame:
    """Download the shard's images into ``data_dir/images/{shard}``; return its status table.

    Resumable: images already valid on disk are not fetched again (their row is carried over,
    or rebuilt from the file). ``previous`` defaults to the shard's status file, if any. With
    ``targets``, only those (doc, index) images are attempted (conditionally when we hold a valid
    copy with validators); every other image keeps its previous row. Raises CaBundleError at
    once when ``settings.ca_bundle`` cannot be used. ``held`` ({relative path: size}, a listing
    of the shard's stored objects) stands in for the disk when the data folder is an object
    store: an image whose previous row is ok with that path and size is held, not fetched.
    Once every row exists, stand-ins and tiny images (``storing/standins.py``) are marked
    ``placeholder`` / ``too_small`` and their files deleted; ``known_standins``, the body hashes
    of the corpus index, are stand-ins too (rows carried over included: a rerun re-marks them).
    Duplicates of earlier images are recorded in ``duplicate_of`` (``storing/duplicates.py``).

    Politeness: every site's slots come from the ledger at ``settings.ledger_url`` (shared with
    every run that names it), and so do robots.txt entries (``RobotsCache``; ``robots_store``,
    default the data folder, holds entries in the old layout). ``stats``, when given, receives
    what politeness did (robots.txt fetched and cached, throttles, the ledger's cost) and, under
    ``site_limits``, the learned limits of the busiest sites (``SiteBroker.busiest``).
    """
    tls_context(settings.ca_bundle)  # an unusable CA bundle stops the run before any work
    tune_memory()
    run = _ShardRun(int(shard), settings, progress, progress_interval)
    run.held = held
    run.robots = RobotsCache(settings.ledger_url, robots_store or LocalStore(Path(data_dir)))
    if previous is None:
        previous = read_status(data_dir, shard)
    folder = Path(data_dir) / "images" / str(shard)
    table = run.execute(folder, list(refs), _previous_rows(previous), targets)
    # Stand-ins and tiny images, once every row exists: their rows marked, their files gone.
    table, dropped = mark_standins(
        table,
        min_urls=settings.standin_min_urls,
        min_documents=settings.standin_min_documents,
        min_side=settings.min_image_side,
        standin_urls=settings.standin_urls,
        known_bodies=known_standins,
    )
    for relpath in dropped:
        (Path(data_dir) / relpath).unlink(missing_ok=True)
    table["duplicate_of"] = duplicate_of(table, settings.duplicate_max_distance)
    if stats is not None:
        stats.update(dict.fromkeys(COUNTERS, 0))
        stats.update(run.politeness)
        stats["site_limits"] = run.site_limits
    return table


class _ShardRun(FetchLoop):
    """State of one download_shard call."""

    def __init__(self, shard, settings, progress, progress_interval) -> None:
        super().__init__(shard, settings, progress, progress_interval)
        self.held: Mapping[str, int] | None = None  # stored objects, when not on this disk
        self.robots: RobotsCache | None = None
        self.rows: list[tuple | None] = []
        self.site_limits: list[dict] = []  # the busiest sites' learned limits (run metadata)

    # -- planning ---------------------------------------------------------------------------

    def execute(self, folder: Path, refs, previous, targets) -> pd.DataFrame:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)
        self._total = len(refs)
        self.rows = [None] * len(refs)
        allocator = NameAllocator()
        jobs: list[ImageJob] = []
        for position, ref in enumerate(refs):
            name = allocator.allocate(ref.image_name, ref.url, ref.doc, ref.index)
            path = contained_path(folder, name)
            old = previous.get((ref.doc, ref.index))
            if old is not None and (old["url"] != ref.url or old["image_name"] != ref.image_name):
                old = None  # the shard changed under us: that row describes another image
            if targets is not None and (ref.doc, ref.index) not in targets and old is not None:
                self.finish(position, old)
                continue
            job = ImageJob(position, ref, name, path, f"images/{self.shard}/{name}", old)
            try:
                check_url(ref.url)
            except InvalidUrl as error:
                self.finish(position, failure_row(self.shard, job, "invalid_url", str(error)))
                remove_file(job)
                continue
            job.host = host_of(ref.url)
            job.site = site_of(job.host)
            job.origin = origin_of(ref.url)
            jobs.append(job)
        self.report()
        with ThreadPoolExecutor(self.decoders, thread_name_prefix="mmc4-decode") as pool:
            network = self._check_local_copies(jobs, pool, refresh=targets is not None)
            if network:
                self._fetch(network, pool)
        self.report()
        return normalize_status(pd.DataFrame.from_records(self.rows, columns=ALL_COLUMNS))

    def _check_local_copies(self, jobs, pool, *, refresh: bool) -> list[ImageJob]:
        """Carry over valid files (full mode) or prepare conditional refreshes (targets mode)."""
        held = self.held
        on_disk = [
            job for job in jobs if job.path.is_file() or (held is not None and job.relpath in held)
        ]
        if not on_disk:
            return jobs

        def check(job: ImageJob) -> dict | None:
            if held is not None and job.relpath in held and not job.path.is_file():
                return held_copy(job, held[job.relpath])
            return check_local_copy(job, self.settings, self.shard)

        verdicts = dict(zip(map(id, on_disk), pool.map(check, on_disk), strict=True))
        remaining = []
        for job in jobs:
            row = verdicts.get(id(job))
            if row is None:
                remaining.append(job)
            elif not refresh:
                self.finish(job.position, row)
            else:
                job.have_copy = True
                job.previous = row
                job.conditional = bool(row.get("etag") or row.get("last_modified"))
                remaining.append(job)
        return remaining

    def keep(self, position: int, row: dict) -> None:
        # Rows from the decoders carry the perceptual hash's pixels; it is made here, where
        # numpy is loaded anyway (imaging/phash.py).
        if isinstance(row.get("phash"), bytes):
            row["phash"] = from_thumbnail(row["phash"])
        # A tuple, not the dict: 25k long-lived dicts scattered among body buffers fragment the
        # heap; tuples are a third the size and live in Python's own small-object arenas.
        self.rows[position] = tuple(row.get(name) for name in ALL_COLUMNS)

    def _fetch(self, jobs: list[ImageJob], pool: ThreadPoolExecutor) -> None:
        """Fetch over the network, with the run's site broker and its robots.txt cache."""
        settings = self.settings
        if settings.respect_robots_txt and self.robots is not None:
            self.robots_cache = self.robots.load(job.origin for job in jobs)
        broker = open_broker(settings)
        try:
            workers = worker_count(settings, len(jobs))
            if workers > 1:
                self._fetch_in_workers(split_by_site(jobs, workers), broker)
            else:
                self._fetch_here(jobs, pool, local_link(broker))
        finally:
            broker.close()
            self.politeness["ledger_transactions"] += broker.stats["ledger_transactions"]
            self.politeness["ledger_ms"] += round(1000 * broker.stats["ledger_seconds"])
            self.politeness["ledger_errors"] += broker.stats["ledger_errors"]
            self.site_limits = broker.busiest()
            if self.robots is not None:
                if self.robots_fetched:
                    self.robots.save(self.robots_fetched)
                self.robots.close()

    def _fetch_in_workers(self, groups: list[list[ImageJob]], broker: SiteBroker) -> None:
        def tick(received: int) -> None:
            with self._lock:
                self._bytes = received
            self.report()

        share = share_of(self.settings, len(groups), self.decoders)
        fetched, politeness = fetch_in_workers(
            groups,
            share,
            self.shard,
            self.finish,
            tick,
            self.progress_interval,
            broker,
            self.robots_cache,
        )
        self.robots_fetched.extend(fetched)
        self.politeness.update(politeness)
