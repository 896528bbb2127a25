"""Asset checks that re-read what a run wrote, for every shard the run materialized."""

from collections.abc import Callable

import dagster as dg

from mmc4_assets.corpus.assignment import check_assignments
from mmc4_assets.corpus.shards import parse_shard
from mmc4_assets.corpus.status import check_status, read_status
from mmc4_assets.downloader.refs import iter_image_refs
from mmc4_assets.resources import CorpusStorage
from mmc4_assets.storage import layout
from mmc4_assets.storage.publish import stored_parts
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
    store = storage.store()

    def problems(shard: int) -> list[str]:
        docs = layout.reassigned_docs(shard)
        with store.inputs([docs]) as work:
            return check_assignments(work / docs)

    return _check_shards(context, problems)


@dg.asset_check(
    asset="status_report",
    description="Every image of the shard has exactly one status row, and every ok row's file "
    "exists on disk.",
)
def every_image_has_one_status(
    context: dg.AssetCheckExecutionContext, storage: CorpusStorage
) -> dg.AssetCheckResult:
    store = storage.store()

    def problems(shard: int) -> list[str]:
        raw, parquet = layout.raw_docs(shard), layout.status_parquet(shard)
        with store.inputs([raw, parquet]) as work:
            table = read_status(work, shard)
            if table is None:
                return [f"no status table at {store.url(parquet)}"]
            refs = list(iter_image_refs(work / raw))
            # On an object store, "the file exists" is "the listing names it".
            stored = store.listing(layout.images_folder(shard)) if store.remote else None
            return check_status(table, refs, work, stored)

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
    store = storage.store()

    def problems(shard: int) -> list[str]:
        with store.workspace() as work:
            if store.remote:  # the sizes file and every tar of the shard the store holds
                store.fetch(work, [layout.training_sizes(shard)])
                store.fetch(work, stored_parts(store, shard), known=True)
            counts = count_training_shards(work, shard)
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
