"""Fetching a shard into raw_docs: the documents as published, unzipped and checked line by line.

Bad lines are KEPT UNCHANGED in the output and counted, so that line N of raw_docs is always
line N of the source (image records and status rows refer to documents by line index).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from mmc4_assets.corpus.atomic import atomic_write
from mmc4_assets.corpus.source import ShardSourceError, open_shard_lines, resolve_shard_source

MAX_BAD_LINE_EXAMPLES = 5

ShardFetchError = ShardSourceError
"""Fetch failures are source failures: the message names the shard and the source."""


@dataclass
class FetchStats:
    """What fetching one shard produced, for asset metadata."""

    shard: int
    source: str
    documents: int = 0  # lines written, bad ones included
    images: int = 0  # in valid documents
    sentences: int = 0  # in valid documents
    bytes: int = 0  # of the written JSONL
    source_sha256: str = ""  # of the source bytes as fetched (compressed)
    bad_lines: int = 0
    bad_line_examples: list[str] = field(default_factory=list)


def _is_number(value: object) -> bool:
    return type(value) is float or type(value) is int


def _matrix_shape(matrix: list) -> str:
    widths = {len(row) if isinstance(row, list) else -1 for row in matrix}
    width = str(widths.pop()) if len(widths) == 1 and -1 not in widths else "ragged"
    return f"{len(matrix)}x{width if matrix else 0}"


def validate_document(obj: object) -> str | None:
    """None when ``obj`` is a usable mmc4 document, else the reason it is not.

    Checked: a JSON object; `text_list` a list of strings; `image_info` a list of objects each
    with text `image_name` and `raw_url`; `similarity_matrix` len(image_info) rows of
    len(text_list) numbers (NaN counts as a number: reassignment reports it separately).
    """
    if not isinstance(obj, dict):
        return f"not a JSON object but {type(obj).__name__}"
    text_list, image_info = obj.get("text_list"), obj.get("image_info")
    if not isinstance(text_list, list) or not all(isinstance(s, str) for s in text_list):
        return "text_list is not a list of strings"
    if not isinstance(image_info, list):
        return "image_info is not a list"
    for index, image in enumerate(image_info):
        if not isinstance(image, dict):
            return f"image_info[{index}] is not an object"
        for key in ("image_name", "raw_url"):
            if not isinstance(image.get(key), str):
                return f"image_info[{index}] has no text {key}"
    matrix = obj.get("similarity_matrix")
    if not isinstance(matrix, list):
        return "similarity_matrix is not a list"
    expected = (len(image_info), len(text_list))
    if len(matrix) != expected[0] or not all(
        isinstance(row, list) and len(row) == expected[1] for row in matrix
    ):
        return (
            f"similarity_matrix is {_matrix_shape(matrix)} "
            f"but image_info x text_list is {expected[0]}x{expected[1]}"
        )
    if not all(_is_number(value) for row in matrix for value in row):
        return "similarity_matrix holds a value that is not a number"
    return None


def _parse(body: bytes) -> tuple[object, str | None]:
    """(parsed value, None) or (None, why it is not JSON). The stdlib takes what orjson refuses."""
    try:
        return orjson.loads(body), None
    except orjson.JSONDecodeError as exc:
        first_error = str(exc)
    try:
        return json.loads(body), None
    except (ValueError, UnicodeDecodeError):
        return None, f"not JSON ({first_error})" if body.strip() else "empty line"


def _checked(body: bytes) -> tuple[dict | None, str | None]:
    """(document, None) for a good line, (None, the problem) for a bad one."""
    value, problem = _parse(body)
    if problem is None:
        problem = validate_document(value)
    return (value, None) if problem is None else (None, problem)


def fetch_shard(docs_url: str | None, shard: int, dest: Path) -> FetchStats:
    """Fetch shard ``shard`` from ``docs_url`` (MMC4_DOCS_URL) into ``dest`` as plain JSONL.

    Lines are written byte for byte, with line endings normalised to \\n (a missing final
    newline is added). Bad lines are kept and counted (see the module docstring). On any error,
    including a shard with no lines, nothing is written and an existing ``dest`` stays intact.
    """
    source = resolve_shard_source(docs_url, shard)
    stats = FetchStats(shard=shard, source=source)
    with open_shard_lines(source, shard=shard) as lines, atomic_write(dest, "wb") as out:
        stats.source_sha256 = lines.sha256
        for number, line in enumerate(lines, start=1):
            body = line[:-1] if line.endswith(b"\n") else line
            body = body[:-1] if body.endswith(b"\r") else body
            doc, problem = _checked(body)
            if doc is not None:
                stats.images += len(doc["image_info"])
                stats.sentences += len(doc["text_list"])
            else:
                stats.bad_lines += 1
                if len(stats.bad_line_examples) < MAX_BAD_LINE_EXAMPLES:
                    stats.bad_line_examples.append(f"line {number}: {problem}")
            out.write(body + b"\n")
            stats.documents += 1
            stats.bytes += len(body) + 1
        if stats.documents == 0:
            raise ShardFetchError(f"shard {shard} ({source}) holds no documents")
    return stats
