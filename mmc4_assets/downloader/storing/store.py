"""Turn what happened to an image into its file on disk and its status row.

The rules that keep the folder honest: a valid body is shrunk and written atomically; no file
may stand for an image whose row is not ok; a target that we held (previous row ok) answering
404/410 is ``gone`` and our copy is deleted; a transient failure (timeout, connection error,
429, 5xx) while refreshing a held copy keeps the copy and its row (``error`` notes the failed
refresh). A valid file already on disk is never fetched again (``check_local_copy``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mmc4_assets.corpus.atomic import atomic_write

from ..fetching.client import FetchResult
from ..fetching.urls import host_of
from ..imaging.prepare import ImageRejected, prepare_image, verify_file_bytes
from ..refs import ImageRef
from ..settings import DownloadSettings


@dataclass(eq=False)
class ImageJob:
    """One image to account for: where it goes, what we knew, how its fetch is going."""

    position: int
    ref: ImageRef
    name: str
    path: Path
    relpath: str
    previous: dict | None
    host: str = ""
    site: str = ""  # the host's registrable domain: the unit of politeness
    origin: str = ""  # scheme://host:port: the unit of robots.txt
    conditional: bool = False
    have_copy: bool = False  # a valid copy is on disk (refresh of a target)
    attempts: int = 0
    deadline: float | None = None  # loop clock, set at the first attempt
    not_before: float = 0.0  # loop clock: a requeued retry waits until then
    turn: float | None = None  # loop clock: its turn under its origin's Crawl-delay
    last_result: FetchResult | None = None  # the failed try a requeued retry follows


def now() -> datetime:
    return datetime.now(UTC)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def base_row(shard: int, job: ImageJob, attempts: int) -> dict:
    ref = job.ref
    return {
        "shard": shard,
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
        "fetched_at": now(),
        "attempts": attempts,
        "host": job.host or host_of(ref.url),
        "original_width": None,
        "original_height": None,
        "body_sha256": None,
        "phash": None,
        "final_url": None,
    }


def failure_row(
    shard: int, job: ImageJob, outcome: str, error, result: FetchResult | None = None
) -> dict:
    row = base_row(shard, job, result.attempts if result else job.attempts)
    row.update(outcome=outcome, error=error)
    if result is not None:
        row.update(http_status=result.http_status, final_url=result.final_url)
    return row


def remove_file(job: ImageJob) -> None:
    """No file may stand for an image whose row is not ok."""
    job.path.unlink(missing_ok=True)


def check_local_copy(job: ImageJob, settings: DownloadSettings, shard: int) -> dict | None:
    """The ok row of a valid file already at the job's path, else None (resume check)."""
    try:
        data = job.path.read_bytes()
    except OSError:
        return None
    old = job.previous
    if (
        old is not None
        and old["outcome"] == "ok"
        and old.get("path") == job.relpath
        and old.get("sha256") == sha256(data)
    ):
        return old
    described = verify_file_bytes(data, max_side=settings.max_side, max_pixels=settings.max_pixels)
    if described is None:
        return None
    row = base_row(shard, job, attempts=0)
    row.update(
        outcome="ok",
        path=job.relpath,
        mimetype=described.mimetype,
        bytes=len(data),
        width=described.width,
        height=described.height,
        original_width=(old or {}).get("original_width") or described.width,
        original_height=(old or {}).get("original_height") or described.height,
        sha256=sha256(data),
        phash=described.thumbnail,  # body_sha256 stays null: the body as served is not known
        final_url=(old or {}).get("final_url"),
        http_status=(old or {}).get("http_status"),
        etag=(old or {}).get("etag"),
        last_modified=(old or {}).get("last_modified"),
        fetched_at=datetime.fromtimestamp(job.path.stat().st_mtime, UTC),
    )
    return row


def held_copy(job: ImageJob, size: int) -> dict | None:
    """The previous ok row of an image stored elsewhere (an object store), when the stored object
    is the one that row describes: same path, same size. Nothing is read."""
    old = job.previous
    if (
        old is not None
        and old["outcome"] == "ok"
        and old.get("path") == job.relpath
        and old.get("bytes") is not None
        and int(old["bytes"]) == int(size)
    ):
        return old
    return None


def store_body(job: ImageJob, result: FetchResult, settings: DownloadSettings, shard: int) -> dict:
    """Validate and shrink a fetched body, write it, and return its row (CPU: a decode thread)."""
    body = result.body or b""
    result.body = None
    try:
        prepared = prepare_image(body, max_side=settings.max_side, max_pixels=settings.max_pixels)
    except ImageRejected as rejected:
        row = failure_row(shard, job, rejected.outcome, str(rejected), result)
        row.update(mimetype=rejected.mimetype, body_sha256=sha256(body))
        remove_file(job)
        return row
    with atomic_write(job.path, "wb") as handle:
        handle.write(prepared.data)
    stored_sha256 = sha256(prepared.data)
    row = base_row(shard, job, result.attempts)
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
        sha256=stored_sha256,
        etag=result.etag,
        last_modified=result.last_modified,
        # A body kept as it is was hashed once, as the stored file.
        body_sha256=sha256(body) if prepared.resized else stored_sha256,
        phash=prepared.thumbnail,
        final_url=result.final_url,
    )
    return row


def store_outcome(job: ImageJob, result: FetchResult, shard: int) -> dict:
    """The row of a fetch that brought no body to decode (304, or a failure); files follow it."""
    old = job.previous
    had_ok = old is not None and old.get("outcome") == "ok"
    if result.outcome == "not_modified" and job.have_copy:
        row = dict(old)
        row.update(
            fetched_at=now(),
            http_status=304,
            attempts=result.attempts,
            error=None,
            etag=result.etag or old.get("etag"),
            last_modified=result.last_modified or old.get("last_modified"),
            final_url=result.final_url or old.get("final_url"),
        )
        return row
    if result.outcome == "not_modified":  # 304 without a copy to keep: never asked for it
        result.outcome, result.error = "http_error", "unexpected 304"
    if had_ok and result.http_status in (404, 410):
        remove_file(job)
        return failure_row(shard, job, "gone", result.error, result)
    transient = result.outcome in ("timeout", "connection_error", "rate_limited") or (
        result.outcome == "http_error" and (result.http_status or 0) >= 500
    )
    if job.have_copy and transient:
        row = dict(old)  # a passing failure must not cost us a good copy
        row["error"] = f"refresh failed: {result.outcome}: {result.error}"
        return row
    remove_file(job)
    return failure_row(shard, job, result.outcome, result.error, result)
