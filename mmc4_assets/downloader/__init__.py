"""The image engine: fetch a shard's images, validate and shrink them, store them, account for each.

Rooms: ``fetching`` (HTTP client, address guard, per-host breaker), ``imaging`` (sniff, validate,
resize), ``storing`` (safe names, files and status rows), ``scheduling`` (the shard run).
"""

from mmc4_assets.downloader.refs import ImageRef, iter_image_refs
from mmc4_assets.downloader.scheduling.shard_run import (
    DownloadSettings,
    ProgressInfo,
    download_shard,
)

__all__ = ["DownloadSettings", "ImageRef", "ProgressInfo", "download_shard", "iter_image_refs"]
