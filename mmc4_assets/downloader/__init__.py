"""The image engine: fetch a shard's images, validate and shrink them, store them, account for each.

Rooms: ``fetching`` (HTTP client, address guard, per-host breaker), ``imaging`` (sniff, validate,
resize), ``storing`` (safe names, files and status rows), ``scheduling`` (the shard run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmc4_assets.downloader.refs import ImageRef, iter_image_refs
from mmc4_assets.downloader.settings import CaBundleError, DownloadSettings

if TYPE_CHECKING:
    from mmc4_assets.downloader.scheduling.shard_run import ProgressInfo, download_shard

__all__ = [
    "CaBundleError",
    "DownloadSettings",
    "ImageRef",
    "ProgressInfo",
    "download_shard",
    "iter_image_refs",
]


def __getattr__(name: str):
    # Loaded on first use: a fetch worker process imports the fetch loop without pandas.
    if name in ("ProgressInfo", "download_shard"):
        from mmc4_assets.downloader.scheduling import shard_run

        return getattr(shard_run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
