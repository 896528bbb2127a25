"""Training tars on an object store, published so that readers never trust a half-published
shard: tars before the sizes file that lists them (images and status tables: image_sync.py)."""

from __future__ import annotations

from pathlib import Path

from mmc4_assets.storage import layout
from mmc4_assets.storage.datastore import DataStore


def stored_parts(store: DataStore, shard: int) -> list[str]:
    """The shard's training tars in the store now (whatever build left them)."""
    found = store.listing(layout.webdataset_folder(), prefix=f"{int(shard)}-")
    return sorted(
        rel for rel in found if layout.part_number(shard, rel.rsplit("/", 1)[-1]) is not None
    )


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
