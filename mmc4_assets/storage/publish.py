"""What a step publishes to an object store, and in which order, so that readers never trust a
half-published shard: images before the status table that vouches for them, tars before the sizes
file that lists them."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from mmc4_assets.storage import layout
from mmc4_assets.storage.datastore import DataStore


def publish_download(
    store: DataStore, work: Path, table: pd.DataFrame, shard: int, stored: dict[str, int]
) -> None:
    """Upload the images this run wrote, delete the objects no ok row names any more (gone, or
    left by a run killed before its status table), then the parquet table, then the tsv.gz."""
    ok_paths = set(table.loc[table["outcome"] == "ok", "path"].dropna().astype(str))
    store.publish(work, sorted(rel for rel in ok_paths if (work / rel).is_file()))
    store.delete(sorted(set(stored) - ok_paths))
    store.publish(work, [layout.status_parquet(shard)])
    store.publish(work, [layout.status_tsv(shard)])


def stored_parts(store: DataStore, shard: int) -> list[str]:
    """The shard's training tars in the store now (whatever build left them)."""
    pattern = re.compile(rf"{int(shard)}-(\d{{3,}})\.tar")
    folder = layout.webdataset_folder()
    found = store.listing(folder, prefix=f"{int(shard)}-")
    return sorted(rel for rel in found if pattern.fullmatch(rel.rsplit("/", 1)[-1]))


def publish_training(store: DataStore, work: Path, shard: int, part_names: list[str]) -> list[str]:
    """Upload the tars, then the sizes file; delete tars of an older, longer build. Returns the
    names of the tars deleted."""
    folder = layout.webdataset_folder()
    parts = [f"{folder}/{name}" for name in part_names]
    store.publish(work, parts)
    store.publish(work, [layout.training_sizes(shard)])
    leftovers = [rel for rel in stored_parts(store, shard) if rel not in set(parts)]
    store.delete(leftovers)
    return [rel.rsplit("/", 1)[-1] for rel in leftovers]
