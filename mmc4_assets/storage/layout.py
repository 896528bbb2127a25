"""Relative paths of every output under the data folder (docs/contracts.md, "Files under the
data folder"), as object keys use them: a store joins them to its root or its URL."""

from __future__ import annotations

import re
from urllib.parse import quote


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


def part_name(shard: int, part: int) -> str:
    """`{shard}-{part}.tar`, parts numbered 000, 001, ..."""
    return f"{int(shard)}-{int(part):03d}.tar"


def part_number(shard: int, name: str) -> int | None:
    """The part number of ``name`` if it is one of the shard's tars, else None."""
    match = re.fullmatch(rf"{int(shard)}-(\d{{3,}})\.tar", name)
    return int(match.group(1)) if match else None


def training_part(shard: int, part: int) -> str:
    return f"{webdataset_folder()}/{part_name(shard, part)}"


def training_sizes(shard: int) -> str:
    return f"{webdataset_folder()}/{int(shard)}.sizes.json"


def robots_txt(origin: str) -> str:
    """Where earlier versions cached ``origin``'s robots.txt (``scheme://host:port``), one JSON
    object per origin: read during an upgrade only (``politeness/robots_cache.py``)."""
    scheme, rest = origin.split("://", 1)
    host, _, port = rest.rpartition(":")
    return f"robots/{quote(f'{scheme}_{host}_{port}', safe='._-')}.json"


def placeholder_index() -> str:
    """The corpus stand-in index (the ``placeholder_index`` asset): one parquet file."""
    return "placeholders/index.parquet"
