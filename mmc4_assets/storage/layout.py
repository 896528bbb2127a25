"""Relative paths of every output under the data folder (DESIGN.md's layout), as object keys use
them: a store joins them to its root or its URL."""

from __future__ import annotations

from mmc4_assets.training.files import part_name


def raw_docs(shard: int) -> str:
    return f"raw_docs/{int(shard)}.jsonl"


def reassigned_docs(shard: int) -> str:
    return f"reassigned_docs/{int(shard)}.jsonl"


def images_folder(shard: int) -> str:
    return f"images/{int(shard)}"


def status_parquet(shard: int) -> str:
    return f"status/{int(shard)}.parquet"


def status_tsv(shard: int) -> str:
    return f"status/{int(shard)}.tsv.gz"


def webdataset_folder() -> str:
    return "webdataset"


def training_part(shard: int, part: int) -> str:
    return f"{webdataset_folder()}/{part_name(shard, part)}"


def training_sizes(shard: int) -> str:
    return f"{webdataset_folder()}/{int(shard)}.sizes.json"
