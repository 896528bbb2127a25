"""raw_docs (the shard as fetched) and reassigned_docs (image-to-sentence assignment redone)."""

import dagster as dg

from mmc4_assets.assets.common import (
    SHARD_BACKFILL_POLICY,
    disk_full_fails_clearly,
    run_shards,
    url_or_text,
)
from mmc4_assets.corpus.assignment import reassign_shard
from mmc4_assets.corpus.docs import fetch_shard
from mmc4_assets.partitions import shard_partitions
from mmc4_assets.resources import CorpusStorage, ShardSource
from mmc4_assets.run_health import RunHealth


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
    # One run at a time per shard, dead runs cleaned up first; a full disk says so.
    with (
        run_health.guard(context, [shard for _, shard in shards]),
        disk_full_fails_clearly(storage.root, shards),
    ):
        for key, shard in shards:
            dest = storage.raw_docs_path(shard)
            stats = fetch_shard(shard_source.url, shard, dest)
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
                    "path": dg.MetadataValue.path(str(dest)),
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
    # One run at a time per shard, dead runs cleaned up first; a full disk says so.
    with (
        run_health.guard(context, [shard for _, shard in shards]),
        disk_full_fails_clearly(storage.root, shards),
    ):
        for key, shard in shards:
            dest = storage.reassigned_docs_path(shard)
            stats = reassign_shard(storage.raw_docs_path(shard), dest)
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
                    "path": dg.MetadataValue.path(str(dest)),
                },
                partition_key=key,
            )
