"""The backfill schedule: each tick launches the next few shards that were never materialized."""

import dagster as dg

from mmc4_assets.assets.images import DOWNLOAD_RUN_TAGS, STATUS_REPORT
from mmc4_assets.partitions import shard_partitions
from mmc4_assets.resources import BackfillSettings
from mmc4_assets.shard_metadata import planned_partitions

PIPELINE = dg.AssetSelection.assets(
    "raw_docs", "reassigned_docs", "downloaded_images", "status_report"
)


def next_unmaterialized_shards(done: set[str], limit: int) -> list[str]:
    """The first `limit` shard keys, in shard order, that are not in `done`."""
    batch: list[str] = []
    for key in shard_partitions.get_partition_keys():
        if key not in done:
            batch.append(key)
            if len(batch) == limit:
                break
    return batch


@dg.schedule(
    cron_schedule="*/30 * * * *",
    target=PIPELINE,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Materializes the whole pipeline for the next batch of never-materialized shards "
    "(the backfill resource's shards_per_tick), leaving the rest to later ticks.",
)
def new_shards_schedule(context: dg.ScheduleEvaluationContext, backfill: BackfillSettings):
    # Shards with any run so far (done, queued, running or failed) are not this schedule's: failed
    # ones wait for an operator instead of being retried every tick.
    attempted = planned_partitions(context.instance, STATUS_REPORT)
    batch = next_unmaterialized_shards(attempted, backfill.shards_per_tick)
    if not batch:
        return dg.SkipReason("every shard has had a run")
    return [
        dg.RunRequest(run_key=f"new-shard:{key}", partition_key=key, tags=DOWNLOAD_RUN_TAGS)
        for key in batch
    ]
