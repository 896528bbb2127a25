"""The shard's image list: one reference per `image_info` entry, in document order."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NamedTuple

import orjson


class ImageRef(NamedTuple):
    """One image of a shard: where it sits (doc line, index in the doc) and where it lives."""

    doc: int
    index: int
    image_name: str
    url: str


def iter_image_refs(jsonl_path: str | os.PathLike) -> Iterator[ImageRef]:
    """Yield every image of a shard file.

    Lines that are not JSON objects, or whose `image_info` is not a list, carry no images we can
    name and are skipped (raw_docs counts them as bad lines). Entries with a missing or non-text
    name or URL are still yielded, with empty strings, so the downloader records them
    (`invalid_url`) instead of losing them.
    """
    with open(jsonl_path, "rb") as handle:
        for doc, line in enumerate(handle):
            try:
                document = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(document, dict):
                continue
            image_info = document.get("image_info")
            if not isinstance(image_info, list):
                continue
            for index, entry in enumerate(image_info):
                entry = entry if isinstance(entry, dict) else {}
                name = entry.get("image_name")
                url = entry.get("raw_url")
                yield ImageRef(
                    doc,
                    index,
                    name if isinstance(name, str) else "",
                    url if isinstance(url, str) else "",
                )
