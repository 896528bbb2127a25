"""downloaded_images and status_report: one download step that yields both.

The status table is the record of the download, so the step that fetches the images writes it; a
run can also be asked (by the stale-image sensor, or by hand) to work only on stale images.
"""

import contextlib
import time
from datetime import UTC, datetime

import dagster as dg
import pandas as pd

from mmc4_assets.assets.common import (
    SHARD_BACKFILL_POLICY,
    disk_full_fails_clearly,
    outcome_table,
    percent,
    rounded,
    run_shards,
    stored_at,
)
from mmc4_assets.corpus.staleness import stale_clocks, stale_due_at, stale_targets
from mmc4_assets.corpus.status import (
    OUTCOMES,
    read_status,
    retryable_mask,
    summarize,
    write_status,
)
from mmc4_assets.downloader import DownloadSettings, ProgressInfo, download_shard
from mmc4_assets.downloader.politeness import COUNTERS as POLITENESS_COUNTERS
from mmc4_assets.downloader.refs import iter_image_refs
from mmc4_assets.downloader.storing.duplicates import by_site, duplicate_counts
from mmc4_assets.partitions import shard_partitions
from mmc4_assets.resources import (
    CorpusStorage,
    ImageDownloader,
    StalenessPolicy,
    ledger_url,
)
from mmc4_assets.run_health import RunHealth
from mmc4_assets.run_health.pools import DOWNLOAD_POOL
from mmc4_assets.storage import DataStore, layout
from mmc4_assets.storage.image_sync import ImageSync
from mmc4_assets.storage.placeholders import known_standins

DOWNLOADED_IMAGES = dg.AssetKey("downloaded_images")
STATUS_REPORT = dg.AssetKey("status_report")

# Tag every download run so dagster.yaml can cap how many of them run at once.
DOWNLOAD_RUN_TAGS = {"mmc4/stage": "download"}


class ImageDownloadConfig(dg.Config):
    """Run configuration of the download step."""

    only_stale: bool = False
    """Re-download only stale images (failed-and-cooled-down, too old, missing or altered)."""


def _hosts_table(summary: dict) -> str:
    hosts = summary.get("top_failing_hosts") or []
    if not hosts:
        return "no failures"
    return "| host | failures |\n|---|---|\n" + "\n".join(f"| {h} | {n} |" for h, n in hosts)


def _site_limits_table(rows: list[dict]) -> dg.MetadataValue:
    """The busiest sites' learned limits: what each allowed, and how fast it answered."""
    if not rows:
        return dg.MetadataValue.md("no adaptive site answered enough to learn from")
    lines = [
        "| site | bodies | limit reached | limit at end | unloaded ms | loaded ms |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['site']} | {row['bodies']} | {row['limit_reached']} | "
            f"{row['limit_at_end']} | {row['unloaded_ms']} | {row['loaded_ms']} |"
        )
    return dg.MetadataValue.md("\n".join(lines))


def _or_minus_one(value: float | None) -> float:
    return -1.0 if value is None else value


def _outcome_counts(summary: dict) -> dict[str, int]:
    return {f"outcome_{o}": summary["outcomes"].get(o, 0) for o in OUTCOMES}


def _images_metadata(
    summary: dict, attempted: int, wall: float, folder: dg.MetadataValue, politeness: dict
) -> dict:
    return {
        "images": summary["images"],
        "ok": summary["ok"],
        **_outcome_counts(summary),
        "success_percent": percent(summary["success_rate"]),
        "bytes": summary["bytes"],
        "attempted": attempted,
        "images_per_second": rounded(attempted / wall if wall else 0.0),
        "wall_seconds": rounded(wall),
        "folder": folder,
        **{name: int(politeness.get(name, 0)) for name in POLITENESS_COUNTERS},
        # Near max_concurrency, that setting bounds the run; well under it, the sites or the CPU.
        "requests_in_flight_mean": rounded(
            politeness.get("request_seconds", 0) / wall if wall else 0.0
        ),
        "site_limits": _site_limits_table(politeness.get("site_limits", [])),
    }


def _report_metadata(
    table: pd.DataFrame,
    summary: dict,
    staleness: StalenessPolicy,
    store: DataStore,
    shard: int,
    site_limits: list[dict],
) -> dict:
    folder = layout.images_folder(shard)
    earliest_retryable_at, oldest_ok_at = stale_clocks(table)
    due_at = stale_due_at(
        earliest_retryable_at,
        oldest_ok_at,
        retry_cooldown=staleness.retry_cooldown,
        max_age=staleness.max_age,
    )
    return {
        "images": summary["images"],
        "ok": summary["ok"],
        "success_percent": percent(summary["success_rate"]),
        "bytes": summary["bytes"],
        **_outcome_counts(summary),
        "retryable_failures": int(retryable_mask(table).sum()),
        **dict(zip(("exact_duplicates", "near_duplicates"), duplicate_counts(table), strict=True)),
        "outcomes": dg.MetadataValue.md(outcome_table(summary["outcomes"])),
        "top_failing_hosts": dg.MetadataValue.md(_hosts_table(summary)),
        # For people: when this shard's first image goes stale under today's policy.
        "stale_from": dg.MetadataValue.timestamp(due_at) if due_at else "never",
        # What the stale-image sensor reads instead of opening 23,085 parquet files.
        "earliest_retryable_at": dg.MetadataValue.float(earliest_retryable_at or -1.0),
        "oldest_ok_at": dg.MetadataValue.float(oldest_ok_at or -1.0),
        # What the sensor compares to notice files added, deleted or replaced behind our back:
        # the folder's mtime on a local disk, a digest of the listing on an object store.
        "images_stamp": dg.MetadataValue.float(_or_minus_one(store.stamp(folder))),
        "parquet": stored_at(store, layout.status_parquet(shard)),
        "tsv": stored_at(store, layout.status_tsv(shard)),
        "site_limits": _site_limits_table(site_limits),
        # What corpus_summary adds up per site: stand-ins, exact and near duplicates.
        "standins_and_duplicates_by_site": dg.MetadataValue.json(by_site(table)),
    }


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            DOWNLOADED_IMAGES,
            deps=["raw_docs"],
            partitions_def=shard_partitions,
            group_name="images",
            kinds={"jpeg"},
            description="The shard's images under images/{shard}/, longest side at most 800 px, "
            "validated (HTML pages, truncated files and pixel bombs are never saved).",
        ),
        dg.AssetSpec(
            STATUS_REPORT,
            deps=[DOWNLOADED_IMAGES],
            partitions_def=shard_partitions,
            group_name="images",
            kinds={"parquet"},
            description="One row per image of the shard saying what happened to it: "
            "status/{shard}.parquet, and status/{shard}.tsv.gz in the reference layout.",
        ),
    ],
    partitions_def=shard_partitions,
    backfill_policy=SHARD_BACKFILL_POLICY,
    op_tags=DOWNLOAD_RUN_TAGS,
    pool=DOWNLOAD_POOL,
    name="download_images",
)
def download_images(
    context: dg.AssetExecutionContext,
    config: ImageDownloadConfig,
    storage: CorpusStorage,
    image_downloader: ImageDownloader,
    staleness: StalenessPolicy,
    run_health: RunHealth,
):
    settings = image_downloader.settings(ledger_url(context.instance))
    shards = run_shards(context)
    store = storage.store()
    # The corpus stand-in index's latest file (placeholder_index): its bodies are marked at once.
    standins = known_standins(store)
    # One run at a time per shard, dead runs cleaned up first; a full disk says so.
    with (
        run_health.guard(context, [shard for _, shard in shards]),
        disk_full_fails_clearly(store, shards),
    ):
        for key, shard in shards:
            _download_shard(context, config, settings, store, staleness, key, shard, standins)
    # Per-shard metadata was attached above; these close the step for every shard of the run.
    yield dg.MaterializeResult(asset_key=DOWNLOADED_IMAGES)
    yield dg.MaterializeResult(asset_key=STATUS_REPORT)


def _download_shard(
    context: dg.AssetExecutionContext,
    config: ImageDownloadConfig,
    settings: DownloadSettings,
    store: DataStore,
    staleness: StalenessPolicy,
    key: str,
    shard: int,
    standins: frozenset[str] = frozenset(),
) -> None:
    """Download one shard of the run (its images, or only its stale ones) and attach the
    shard's metadata to both assets."""
    raw, folder = layout.raw_docs(shard), layout.images_folder(shard)
    with store.inputs([raw, layout.status_parquet(shard)]) as work:
        refs = list(iter_image_refs(work / raw))
        previous = read_status(work, shard)
        # On an object store, one listing of the shard's images stands in for the disk.
        sync = ImageSync(store, work, shard) if store.remote else None
        stored = sync.stored if sync is not None else None
        targets = None
        if config.only_stale and previous is not None:
            targets = stale_targets(
                previous,
                data_dir=work,
                now=datetime.now(UTC),
                retry_cooldown=staleness.retry_cooldown,
                max_age=staleness.max_age,
                stored_sizes=stored,
            )
            context.log.info(f"shard {shard}: {len(targets)} stale image(s) to re-download")
        if sync is not None and (adopted := sync.adopt_unrecorded(previous)):
            context.log.info(
                f"shard {shard}: {adopted} stored image(s) no status row vouches for "
                "(a killed run's uploads) fetched to be checked, not downloaded again"
            )

        def report(progress: ProgressInfo) -> None:
            context.log.info(
                f"shard {shard}: {progress.done}/{progress.total} images, "
                f"{progress.outcomes.get('ok', 0)} ok, "
                f"{progress.images_per_second:.1f} images/s"
            )

        started = time.monotonic()
        politeness: dict = {}
        with sync.uploading() if sync is not None else contextlib.nullcontext():
            table = download_shard(
                refs,
                data_dir=work,
                shard=shard,
                settings=settings,
                previous=previous,
                targets=targets,
                progress=report,
                held=stored,
                robots_store=store,
                stats=politeness,
                known_standins=standins,
            )
        wall = time.monotonic() - started
        write_status(table, work, shard)
        if sync is not None:
            sync.finish(table)
    summary = summarize(table)
    attempted = len(refs) if targets is None else len(targets)
    context.add_asset_metadata(
        _images_metadata(summary, attempted, wall, stored_at(store, folder), politeness),
        asset_key=DOWNLOADED_IMAGES,
        partition_key=key,
    )
    context.add_asset_metadata(
        _report_metadata(
            table, summary, staleness, store, shard, politeness.get("site_limits", [])
        ),
        asset_key=STATUS_REPORT,
        partition_key=key,
    )
    context.log.info(
        f"shard {shard}: {summary['outcomes'].get('ok', 0)}/{summary['images']} ok "
        f"({summary['success_rate']:.1%}), {attempted} attempted in {wall:.1f}s"
    )
