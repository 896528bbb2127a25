"""What every shard asset needs: the shards of this run, and the backfill batching."""

import warnings

import dagster as dg

from mmc4_assets.corpus.shards import parse_shard
from mmc4_assets.corpus.status import OUTCOMES

# BackfillPolicy is marked beta; we rely on it knowingly, so keep every CLI run's log free of it.
warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=dg.BetaWarning)

# A UI backfill over thousands of shards becomes runs of this many shards each (one policy for
# every stage, so a backfill of the whole pipeline batches the same way at each step).
SHARD_BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=8)


def run_shards(context: dg.AssetExecutionContext) -> list[tuple[str, int]]:
    """(partition key, shard number) for each shard this run materializes: one, or a batch."""
    return [(key, parse_shard(key)) for key in context.partition_keys]


def url_or_text(location: str) -> dg.MetadataValue:
    if location.startswith(("http://", "https://")):
        return dg.MetadataValue.url(location)
    return dg.MetadataValue.text(location)


def outcome_table(counts: dict[str, int]) -> str:
    """A markdown table of images per outcome, every outcome listed."""
    rows = [f"| {outcome} | {counts.get(outcome, 0)} |" for outcome in OUTCOMES]
    return "| outcome | images |\n|---|---|\n" + "\n".join(rows)
