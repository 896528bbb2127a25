"""What every shard asset needs: the shards of this run, and the backfill batching."""

import contextlib
import errno
import warnings
from collections.abc import Iterator

import dagster as dg

from mmc4_assets.corpus.shards import parse_shard
from mmc4_assets.corpus.status import OUTCOMES
from mmc4_assets.storage import DataStore

# Beta APIs we rely on knowingly: BackfillPolicy, and the `*` selection users type (Dagster parses
# it with AssetSelection.all(include_sources=...)). Keep every CLI run's output free of them.
warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=dg.BetaWarning)
warnings.filterwarnings("ignore", message=".*include_sources.*", category=dg.BetaWarning)

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


def percent(ratio: float) -> dg.MetadataValue:
    """A ratio shown as a percentage with one decimal (98.2, not 0.9821826280623608)."""
    return dg.MetadataValue.float(round(100.0 * ratio, 1))


def rounded(value: float, digits: int = 1) -> dg.MetadataValue:
    """A rate or a duration as people read it."""
    return dg.MetadataValue.float(round(value, digits))


def outcome_table(counts: dict[str, int]) -> str:
    """A markdown table of images per outcome, every outcome listed."""
    rows = [f"| {outcome} | {counts.get(outcome, 0)} |" for outcome in OUTCOMES]
    return "| outcome | images |\n|---|---|\n" + "\n".join(rows)


def stored_at(store: DataStore, rel: str) -> dg.MetadataValue:
    """Where an output lives: a path for a local data folder, its URL on an object store."""
    where = store.url(rel) if rel else store.location
    return dg.MetadataValue.text(where) if store.remote else dg.MetadataValue.path(where)


@contextlib.contextmanager
def disk_full_fails_clearly(store: DataStore, shards: list[tuple[str, int]]) -> Iterator[None]:
    """Turn "no space left" into a step failure that says what happened and what to do.

    Every file is written to a temporary name and renamed into place (on an object store: each
    object in one upload, from a local scratch folder, whose disk is the one that can fill), so
    what is stored after the failure is whole; the next run keeps it."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        numbers = ", ".join(str(shard) for _, shard in shards)
        bigger = "MMC4_SCRATCH_DIR" if store.remote else "MMC4_DATA_DIR"
        full = store.scratch_note()
        raise dg.Failure(
            description=f"{full[:1].upper()}{full[1:]} is full "
            f"({error.strerror}) while writing shard(s) {numbers}. Files already written are "
            "complete and kept; no partial file is left under a final name. Free some space (or "
            f"point {bigger} at a bigger disk) and run again: what is already valid is not "
            "fetched again.",
            metadata={"data_dir": stored_at(store, "")},
            allow_retries=False,
        ) from error
