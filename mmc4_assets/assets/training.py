"""training_shards: the shard packed as WebDataset tars in OpenFlamingo's mmc4 format."""

import time

import dagster as dg

from mmc4_assets.assets.common import (
    SHARD_BACKFILL_POLICY,
    disk_full_fails_clearly,
    rounded,
    run_shards,
    stored_at,
)
from mmc4_assets.assets.images import STATUS_REPORT
from mmc4_assets.corpus.status import read_status
from mmc4_assets.partitions import shard_partitions
from mmc4_assets.resources import CorpusStorage, TrainingShardSettings
from mmc4_assets.run_health import RunHealth
from mmc4_assets.storage import layout
from mmc4_assets.storage.publish import publish_training
from mmc4_assets.training.packing import PackResult, pack_shard
from mmc4_assets.training.samples import IMAGES_LEFT_OUT, LEFT_OUT_REASONS

TRAINING_SHARDS = dg.AssetKey("training_shards")


def _parts_table(result: PackResult) -> str:
    rows = [f"| {part.name} | {part.samples} | {part.bytes} |" for part in result.parts]
    return "| tar | samples | bytes |\n|---|---|---|\n" + ("\n".join(rows) or "| none | 0 | 0 |")


def _metadata(result: PackResult, wall: float, sizes: dg.MetadataValue) -> dict:
    stats = result.stats
    return {
        "samples": stats.samples,
        "documents": stats.documents,
        "documents_left_out": sum(stats.left_out.values()),
        **{f"left_out_{reason}": stats.left_out[reason] for reason in LEFT_OUT_REASONS},
        "images": stats.images,
        "images_embedded": stats.images_embedded,
        # OpenFlamingo's loader silently skips images of 10 KB or less (len // 1000 <= 10).
        "images_below_loader_floor": stats.images_below_loader_floor,
        "images_missing": stats.images_missing,
        "images_not_matching_status": stats.images_not_matching_status,
        # Stand-ins and tiny images (status placeholder / too_small): never embedded.
        **{f"images_{outcome}": stats.images_left_out[outcome] for outcome in IMAGES_LEFT_OUT},
        "parts": len(result.parts),
        "bytes": result.bytes,
        "tars": dg.MetadataValue.md(_parts_table(result)),
        "documents_per_second": rounded(stats.documents / wall if wall else 0.0),
        "wall_seconds": rounded(wall, 2),
        "sizes": sizes,
    }


@dg.asset(
    deps=["reassigned_docs", STATUS_REPORT],
    partitions_def=shard_partitions,
    backfill_policy=SHARD_BACKFILL_POLICY,
    group_name="training",
    kinds={"webdataset"},
    description="The shard as OpenFlamingo's mmc4 loader reads it: webdataset/{shard}-{part}.tar, "
    "one `{shard}-{line}.json` sample per document holding at least one stored image (embedded "
    "as image_base64), and webdataset/{shard}.sizes.json (samples per tar).",
)
def training_shards(
    context: dg.AssetExecutionContext,
    storage: CorpusStorage,
    training_shard_settings: TrainingShardSettings,
    run_health: RunHealth,
) -> None:
    limits = training_shard_settings.limits()
    shards = run_shards(context)
    store = storage.store()
    # One run at a time per shard, dead runs cleaned up first; a full disk says so.
    with (
        run_health.guard(context, [shard for _, shard in shards]),
        disk_full_fails_clearly(store, shards),
    ):
        for key, shard in shards:
            docs = layout.reassigned_docs(shard)
            with store.inputs([docs, layout.status_parquet(shard)]) as work:
                status = read_status(work, shard)
                if status is None or not (work / docs).exists():
                    missing = docs if not (work / docs).exists() else layout.status_parquet(shard)
                    raise dg.Failure(
                        f"shard {shard}: {store.url(missing)} does not exist; materialize "
                        "reassigned_docs and status_report for this shard first"
                    )
                if store.remote:  # the images to embed, in one batched download
                    stored = store.listing(layout.images_folder(shard))
                    wanted = status.loc[status["outcome"] == "ok", "path"].dropna().astype(str)
                    store.fetch(work, sorted(set(wanted) & set(stored)), known=True)
                started = time.monotonic()
                result = pack_shard(
                    work / docs, status, work, shard, limits,
                    training_shard_settings.leave_out_url_duplicates,
                )  # fmt: skip
                wall = time.monotonic() - started
                if store.remote:
                    names = [part.name for part in result.parts]
                    result.removed_parts += publish_training(store, work, shard, names)
            stats = result.stats
            context.log.info(
                f"shard {shard}: {stats.samples} samples with {stats.images_embedded} images in "
                f"{len(result.parts)} tar(s) under {store.url(layout.webdataset_folder())}; "
                f"{sum(stats.left_out.values())} document(s) left out {dict(stats.left_out)}"
            )
            if stats.images_missing or stats.images_not_matching_status:
                context.log.warning(
                    f"shard {shard}: {stats.images_missing} image(s) ok in the status table "
                    f"have no file, {stats.images_not_matching_status} status row(s) name another "
                    "image; rerun download_images for this shard"
                )
            sizes = stored_at(store, layout.training_sizes(shard))
            context.add_asset_metadata(_metadata(result, wall, sizes), partition_key=key)
