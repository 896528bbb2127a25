"""placeholder_index: the corpus stand-in index, from every materialized shard's status table.

A body served under at least ``min_urls`` (10) distinct URLs across the corpus is a stand-in,
however thinly it is spread over the shards (``mmc4_assets/corpus/placeholder_index.py`` says how
it is counted). The status tables are read through the data store, so a bucket works as a disk
does; the index is one parquet file, ``placeholders/index.parquet``, that downloads read.
"""

import time
from collections.abc import Iterator, Sequence

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from mmc4_assets.assets.common import rounded, stored_at
from mmc4_assets.assets.images import STATUS_REPORT
from mmc4_assets.corpus.placeholder_index import (
    DEFAULT_MIN_URLS,
    build_placeholder_index,
    standin_bodies,
)
from mmc4_assets.resources import CorpusStorage
from mmc4_assets.run_health import RunHealth
from mmc4_assets.shard_metadata import latest_storage_ids
from mmc4_assets.storage import DataStore, layout

INDEX_COLUMNS = ("shard", "url", "outcome", "body_sha256")
READ_BATCH = 32  # status tables read at once (concurrently on an object store): ~50 MB
TOP_STANDINS = 10


class PlaceholderIndexConfig(dg.Config):
    """Run configuration of the index."""

    min_urls: int = DEFAULT_MIN_URLS
    """Distinct URLs (across the corpus) that make a body a stand-in: 1 to 255."""


def read_status_columns(data: bytes, where: str) -> pa.Table:
    """The columns the index needs of one status parquet file (those it has: an old table has
    no ``body_sha256``)."""
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        present = set(parquet.schema_arrow.names)
        return parquet.read(columns=[name for name in INDEX_COLUMNS if name in present])
    except (pa.ArrowException, OSError) as error:
        raise RuntimeError(f"cannot read the status table {where}: {error}") from error


class StatusTables:
    """The shards' status tables, read through the store each time they are iterated (the index
    reads them twice); ``missing``: shards whose table was not there."""

    def __init__(self, store: DataStore, shards: Sequence[int], batch: int = READ_BATCH) -> None:
        self.store, self.shards, self.batch = store, list(shards), batch
        self.missing: set[int] = set()

    def __len__(self) -> int:
        return len(self.shards)

    def __iter__(self) -> Iterator[pa.Table]:
        for start in range(0, len(self.shards), self.batch):
            batch = self.shards[start : start + self.batch]
            rels = {shard: layout.status_parquet(shard) for shard in batch}
            contents = self.store.read_many(rels.values())
            for shard, rel in rels.items():
                if rel not in contents:
                    self.missing.add(shard)
                    continue
                yield read_status_columns(contents.pop(rel), self.store.url(rel))


def write_index(store: DataStore, index: pa.Table) -> None:
    """The index as one parquet file, stored whole or not at all."""
    sink = pa.BufferOutputStream()
    pq.write_table(index, sink, compression="zstd")
    store.write_many({layout.placeholder_index(): sink.getvalue().to_pybytes()})


def known_standins(store: DataStore) -> frozenset[str]:
    """The body hashes of the latest index in the data folder (none before its first run)."""
    rel = layout.placeholder_index()
    found = store.read_many([rel])
    if rel not in found:
        return frozenset()
    return standin_bodies(pq.read_table(pa.BufferReader(found[rel])))


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
