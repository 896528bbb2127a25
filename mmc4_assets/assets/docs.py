"""raw_docs (the shard as fetched) and reassigned_docs (image-to-sentence assignment redone)."""

import dagster as dg

from mmc4_assets.assets.common import (
    SHARD_BACKFILL_POLICY,
    disk_full_fails_clearly,
    run_shards,
    stored_at,
    url_or_text,
)
from mmc4_assets.corpus.assignment import reassign_shard
from mmc4_assets.corpus.docs import fetch_shard
from mmc4_assets.partitions import shard_partitions
from mmc4_assets.resources import CorpusStorage, ShardSource
from mmc4_assets.run_health import RunHealth
from mmc4_assets.storage import layout


@dg.asset(
    partitions_def=shard_partitions,
    backfill_policy=SHARD_BACKFILL_POLICY,
    group_name="docs",
    kinds={"json"},
    description="The shard's documents as fetched from MMC4_DOCS_URL, unzipped and validated: "
    "raw_docs/{shard}.jsonl. Malformed lines are kept unchanged and counted.",
)
def raw_docs(
    context: dg.AssetExecutionContext,
    storage: CorpusStorage,
    shard_source: ShardSource,
    run_health: RunHealth,
) -> None:
    shards = run_shards(context)
    store = storage.store()
    # One run at a time per shard, dead runs cleaned up first; a full disk says so.
    with (
        run_health.guard(context, [shard for _, shard in shards]),
        disk_full_fails_clearly(store, shards),
    ):
        for key, shard in shards:
            rel = layout.raw_docs(shard)
            with store.workspace() as work:
                stats = fetch_shard(shard_source.url, shard, work / rel)
                store.publish(work, [rel])
            context.log.info(
                f"shard {shard}: {stats.documents} documents, {stats.images} images "
                f"from {stats.source}"
            )
            if stats.bad_lines:
                context.log.warning(
                    f"shard {shard}: {stats.bad_lines} malformed line(s) kept unchanged, e.g. "
                    + "; ".join(stats.bad_line_examples[:3])
                )
            context.add_asset_metadata(
                {
                    "documents": stats.documents,
                    "images": stats.images,
                    "sentences": stats.sentences,
                    "bytes": stats.bytes,
                    "bad_lines": stats.bad_lines,
                    "bad_line_policy": "kept unchanged in place, counted",
                    "bad_line_examples": dg.MetadataValue.md(
                        "\n".join(f"- {e}" for e in stats.bad_line_examples) or "none"
                    ),
                    "source": url_or_text(stats.source),
                    "source_sha256": stats.source_sha256,
                    "path": stored_at(store, rel),
                },
                partition_key=key,
            )


@dg.asset(
    deps=[raw_docs],
    partitions_def=shard_partitions,
    backfill_policy=SHARD_BACKFILL_POLICY,
    group_name="docs",
    kinds={"json"},
    description="raw_docs with matched_text_index / matched_sim recomputed by linear assignment "
    "(lapjv, as the mmc4 reference): reassigned_docs/{shard}.jsonl.",
)
def reassigned_docs(
    context: dg.AssetExecutionContext, storage: CorpusStorage, run_health: RunHealth
) -> None:
    shards = run_shards(context)
    store = storage.store()
    # One run at a time per shard, dead runs cleaned up first; a full disk says so.
    with (
        run_health.guard(context, [shard for _, shard in shards]),
        disk_full_fails_clearly(store, shards),
    ):
        for key, shard in shards:
            src, rel = layout.raw_docs(shard), layout.reassigned_docs(shard)
            with store.inputs([src]) as work:
                stats = reassign_shard(work / src, work / rel)
                store.publish(work, [rel])
            left_alone = sum(stats.unchanged.values())
            context.log.info(
                f"shard {shard}: {stats.documents} documents, {stats.images} images, "
                f"{stats.changed} assignment(s) changed, {left_alone} document(s) left unchanged"
            )
            context.add_asset_metadata(
                {
                    "documents": stats.documents,
                    "images": stats.images,
                    "assignments_changed": stats.changed,
                    "documents_unchanged": left_alone,
                    **{f"unchanged_{reason}": count for reason, count in stats.unchanged.items()},
                    "path": stored_at(store, rel),
                },
                partition_key=key,
            )
