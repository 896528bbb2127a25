"""The Dagster definitions of the mmc4 pipeline: assets, checks, resources, sensor, schedule."""

import dagster as dg

from mmc4_assets.assets.corpus_summary import corpus_summary
from mmc4_assets.assets.docs import raw_docs, reassigned_docs
from mmc4_assets.assets.images import download_images
from mmc4_assets.assets.placeholder_index import placeholder_index
from mmc4_assets.assets.training import training_shards
from mmc4_assets.checks import (
    assignments_are_valid,
    every_image_has_one_status,
    training_shards_match_their_counts,
)
from mmc4_assets.resources import (
    BackfillSettings,
    CorpusStorage,
    ImageDownloader,
    ShardSource,
    StalenessPolicy,
    TrainingShardSettings,
)
from mmc4_assets.run_health import RunHealth
from mmc4_assets.schedules import new_shards_schedule
from mmc4_assets.sensors import dead_runs_sensor, stale_images_sensor

ASSETS = [
    raw_docs,
    reassigned_docs,
    download_images,
    corpus_summary,
    placeholder_index,
    training_shards,
]
ASSET_CHECKS = [
    assignments_are_valid,
    every_image_has_one_status,
    training_shards_match_their_counts,
]
RESOURCES = {
    "storage": CorpusStorage(),
    "shard_source": ShardSource(),
    "image_downloader": ImageDownloader(),
    "staleness": StalenessPolicy(),
    "backfill": BackfillSettings(),
    "training_shard_settings": TrainingShardSettings(),
    "run_health": RunHealth(),
}

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=ASSET_CHECKS,
    sensors=[stale_images_sensor, dead_runs_sensor],
    schedules=[new_shards_schedule],
    resources=RESOURCES,
)
