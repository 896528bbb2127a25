"""The corpus stand-in index in the data store: the status tables it is built from, its file.

No Dagster here. ``StatusTables`` reads the columns the index needs of each shard's status table
through the store (a bucket as a disk), as often as it is iterated; ``write_index`` stores the
index whole; ``known_standins`` is what downloads read of it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from mmc4_assets.corpus.placeholder_index import standin_bodies
from mmc4_assets.storage import layout
from mmc4_assets.storage.datastore import DataStore

INDEX_COLUMNS = ("shard", "url", "outcome", "body_sha256")
READ_BATCH = 32  # status tables read at once (concurrently on an object store): ~50 MB


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
