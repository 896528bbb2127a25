"""placeholder_index: the corpus stand-in index, from every materialized shard's status table.

A body served under at least ``min_urls`` (10) distinct URLs across the corpus is a stand-in,
however thinly it is spread over the shards (``mmc4_assets/corpus/placeholder_index.py`` says how
it is counted). The status tables are read through the data store (``storage/placeholders.py``),
so a bucket works as a disk does; the index is one parquet file, ``placeholders/index.parquet``,
that downloads read.
"""

import time

import dagster as dg
import pyarrow as pa

from mmc4_assets.assets.common import rounded, stored_at
from mmc4_assets.assets.images import STATUS_REPORT
from mmc4_assets.corpus.placeholder_index import DEFAULT_MIN_URLS, build_placeholder_index
from mmc4_assets.resources import CorpusStorage
from mmc4_assets.run_health import RunHealth
from mmc4_assets.shard_metadata import latest_storage_ids
from mmc4_assets.storage import layout
from mmc4_assets.storage.placeholders import StatusTables, write_index

TOP_STANDINS = 10


class PlaceholderIndexConfig(dg.Config):
    """Run configuration of the index."""

    min_urls: int = DEFAULT_MIN_URLS
    """Distinct URLs (across the corpus) that make a body a stand-in: 1 to 255."""


def _top_table(index: pa.Table) -> dg.MetadataValue:
    if not index.num_rows:
        return dg.MetadataValue.md("no stand-in in the corpus")
    lines = ["| body_sha256 | URLs | shards | example URL |", "|---|---|---|---|"]
    for row in index.slice(0, TOP_STANDINS).to_pylist():
        lines.append(
            f"| {row['body_sha256'][:16]}… | {row['urls']} | {row['shards']} | "
            f"{row['example_url']} |"
        )
    return dg.MetadataValue.md("\n".join(lines))


@dg.asset(
    deps=[STATUS_REPORT],
    group_name="images",
    kinds={"parquet"},
    description="The corpus stand-in index: every body hash served under at least 10 distinct "
    "URLs across the materialized shards' status tables, with its URL and shard counts: "
    "placeholders/index.parquet. Downloads mark such bodies placeholder.",
)
def placeholder_index(
    context: dg.AssetExecutionContext,
    config: PlaceholderIndexConfig,
    storage: CorpusStorage,
    run_health: RunHealth,
) -> dg.MaterializeResult:
    store = storage.store()
    with run_health.guard(context):  # a heartbeat only: it writes no shard
        started = time.monotonic()
        shards = sorted(int(key) for key in latest_storage_ids(context.instance, STATUS_REPORT))
        tables = StatusTables(store, shards)
        index = build_placeholder_index(tables, min_urls=config.min_urls)
        write_index(store, index)
        seconds = time.monotonic() - started
    read = len(shards) - len(tables.missing)
    context.log.info(
        f"{index.num_rows} stand-in bodies from {read} shards' status tables in {seconds:.1f}s"
        + (f"; {len(tables.missing)} materialized shards had none" if tables.missing else "")
    )
    return dg.MaterializeResult(
        metadata={
            "bodies_indexed": index.num_rows,
            "standin_urls": int(sum(index["urls"].to_pylist())),
            "shards_read": read,
            "shards_missing": len(tables.missing),
            "min_urls": config.min_urls,
            "seconds": rounded(seconds),
            "path": stored_at(store, layout.placeholder_index()),
            "top_standins": _top_table(index),
        }
    )
