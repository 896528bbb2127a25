"""Asset checks that re-read what a run wrote, for every shard the run materialized."""

from collections.abc import Callable

import dagster as dg

from mmc4_assets.corpus.assignment import check_assignments
from mmc4_assets.corpus.shards import parse_shard
from mmc4_assets.corpus.status import check_status, read_status
from mmc4_assets.downloader.refs import iter_image_refs
from mmc4_assets.resources import CorpusStorage
from mmc4_assets.training.verify import count_training_shards

MAX_PROBLEMS_SHOWN = 20


def _check_shards(
    context: dg.AssetCheckExecutionContext, find_problems: Callable[[int], list[str]]
) -> dg.AssetCheckResult:
    shards = [parse_shard(key) for key in context.partition_keys]
    problems = [f"shard {shard}: {problem}" for shard in shards for problem in find_problems(shard)]
    for problem in problems[:MAX_PROBLEMS_SHOWN]:
        context.log.error(problem)
    if not problems:
        context.log.info(
            f"{context.check_specs[0].name}: passed on shard(s) {', '.join(map(str, shards))}"
        )
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "shards_checked": len(shards),
            "problems": len(problems),
            "first_problems": dg.MetadataValue.md(
                "\n".join(f"- {p}" for p in problems[:MAX_PROBLEMS_SHOWN]) or "none"
            ),
        },
    )


@dg.asset_check(
    asset="reassigned_docs",
    description="Every matched_text_index is a sentence of its document, and no two images share "
    "a sentence where a document has no more images than sentences.",
)
def assignments_are_valid(
    context: dg.AssetCheckExecutionContext, storage: CorpusStorage
) -> dg.AssetCheckResult:
    return _check_shards(
        context, lambda shard: check_assignments(storage.reassigned_docs_path(shard))
    )


@dg.asset_check(
    asset="status_report",
    description="Every image of the shard has exactly one status row, and every ok row's file "
    "exists on disk.",
)
def every_image_has_one_status(
    context: dg.AssetCheckExecutionContext, storage: CorpusStorage
) -> dg.AssetCheckResult:
    def problems(shard: int) -> list[str]:
        table = read_status(storage.root, shard)
        if table is None:
            return [f"no status table at {storage.status_parquet_path(shard)}"]
        refs = list(iter_image_refs(storage.raw_docs_path(shard)))
        return check_status(table, refs, storage.root)

    return _check_shards(context, problems)


def _latest_metadata(instance: dg.DagsterInstance, asset: str, partition: str) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]),
        limit=1,
    ).records
    if not records or records[0].asset_materialization is None:
        return {}
    metadata = records[0].asset_materialization.metadata
    return {key: getattr(value, "value", value) for key, value in metadata.items()}


@dg.asset_check(
    asset="training_shards",
    description="Every tar the sizes sidecar lists exists and holds that many samples (no other "
    "tar of the shard exists), every member is a keyed JSON sample embedding an image, and the "
    "samples and images counted match the materialization's metadata.",
)
def training_shards_match_their_counts(
    context: dg.AssetCheckExecutionContext, storage: CorpusStorage
) -> dg.AssetCheckResult:
    def problems(shard: int) -> list[str]:
        counts = count_training_shards(storage.root, shard)
        found = counts.problems
        recorded = _latest_metadata(context.instance, "training_shards", str(shard))
        for name, counted in (
            ("samples", counts.samples),
            ("images_embedded", counts.images_embedded),
        ):
            if recorded.get(name) != counted:
                found.append(f"{counted} {name} in the tars, metadata says {recorded.get(name)}")
        return found

    return _check_shards(context, problems)
