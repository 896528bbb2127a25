"""The image engine: fetch a shard's images, validate and shrink them, store them, account for each.

Rooms: ``fetching`` (HTTP client, address guard, per-host breaker), ``imaging`` (sniff, validate,
resize), ``storing`` (safe names, files and status rows), ``scheduling`` (the shard run).
"""

from mmc4_assets.downloader.refs import ImageRef, iter_image_refs
from mmc4_assets.downloader.scheduling.shard_run import ProgressInfo, download_shard
from mmc4_assets.downloader.settings import CaBundleError, DownloadSettings

__all__ = [
    "CaBundleError",
    "DownloadSettings",
    "ImageRef",
    "ProgressInfo",
    "download_shard",
    "iter_image_refs",
]
