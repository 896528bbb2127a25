"""One training sample per document: the reassigned document with its stored images embedded.

The sample is what OpenFlamingo's mmc4 loader (`preprocess_interleaved`) reads: the document's
JSON, unchanged, where each `image_info[i]` whose image we hold gains `image_base64` (our stored
file's bytes, not re-encoded). Entries we do not hold stay as they are, so `image_info` and the
rows of `similarity_matrix` stay aligned. Which images we hold comes from the status table
(`ok` rows and their `path`); files are read, never decoded or re-validated.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import orjson
import pandas as pd

from mmc4_assets.corpus.docs import validate_document

LOADER_MIN_KB = 10
"""OpenFlamingo drops an embedded image when `len(bytes) // 1000 <= 10`; we count those."""

LEFT_OUT_REASONS = ("malformed", "no_images", "no_image_held", "url_duplicate")
"""Why a document gets no sample: a bad line (kept in reassigned_docs), no images at all,
images of which we hold none, or (when asked) mmc4's ``could_have_url_duplicate`` mark."""
IMAGES_LEFT_OUT = ("placeholder", "too_small")
"""Status outcomes of images that are not what the page showed (a stand-in, a tracking pixel):
never embedded, counted apart in the metadata."""

KEY_PATTERN = re.compile(r"\d{5}-\d{6,}")


def sample_key(shard: int, doc: int) -> str:
    """Shard and line number: unique across the corpus, sortable, and free of dots (WebDataset
    splits a member name at its first dot)."""
    return f"{int(shard):05d}-{int(doc):06d}"


def below_loader_floor(size: int) -> bool:
    return size // 1000 <= LOADER_MIN_KB


class Sample(NamedTuple):
    key: str
    json: bytes


class HeldImage(NamedTuple):
    image_name: str
    path: str  # relative to the data folder


@dataclass
class SampleStats:
    """What building a shard's samples found, for asset metadata."""

    documents: int = 0
    samples: int = 0
    left_out: Counter = field(default_factory=Counter)
    images: int = 0  # image_info entries of well-formed documents
    images_embedded: int = 0
    images_below_loader_floor: int = 0  # embedded, but OpenFlamingo will skip them
    images_missing: int = 0  # ok in the status table, but no readable file
    images_not_matching_status: int = 0  # the status row names another image
    images_left_out: Counter = field(default_factory=Counter)  # by IMAGES_LEFT_OUT outcome
    image_bytes: int = 0  # embedded, before base64


def held_images(status: pd.DataFrame | None) -> dict[tuple[int, int], HeldImage]:
    """(doc, index) -> the stored file, for every `ok` row of the status table with a path."""
    if status is None or status.empty:
        return {}
    ok = status[(status["outcome"] == "ok") & status["path"].notna()]
    keys = zip(ok["doc"].tolist(), ok["index"].tolist(), strict=True)
    values = map(HeldImage, ok["image_name"].tolist(), ok["path"].tolist())
    return dict(zip(keys, values, strict=True))


def left_out_images(status: pd.DataFrame | None) -> dict[tuple[int, int], str]:
    """(doc, index) -> outcome, for the rows of the status table in ``IMAGES_LEFT_OUT``."""
    if status is None or status.empty:
        return {}
    rows = status[status["outcome"].isin(IMAGES_LEFT_OUT)]
    keys = zip(rows["doc"].tolist(), rows["index"].tolist(), strict=True)
    return dict(zip(keys, rows["outcome"].tolist(), strict=True))


def parse_json(line: bytes) -> tuple[object, bool]:
    """(value, parsed by the stdlib) or (None, False). The stdlib takes what orjson refuses
    (NaN literals, huge integers), and then writes the sample back as the stdlib would."""
    try:
        return orjson.loads(line), False
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(line), True
    except (ValueError, UnicodeDecodeError):
        return None, False


def _dump(document: dict, by_stdlib: bool) -> bytes:
    if by_stdlib:
        return json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return orjson.dumps(document)


def _read_inside(data_dir: Path, relative: str) -> bytes | None:
    """The file's bytes, or None when it is gone, unreadable, or would lie outside data_dir."""
    normal = os.path.normpath(relative)
    if os.path.isabs(normal) or normal == ".." or normal.startswith(".." + os.sep):
        return None
    try:
        with open(data_dir / normal, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def _embed(
    document: dict,
    doc: int,
    held: dict[tuple[int, int], HeldImage],
    data_dir: Path,
    stats: SampleStats,
    left_out: Mapping[tuple[int, int], str],
) -> int:
    """Add `image_base64` to each entry whose image we hold; return how many were added."""
    embedded = 0
    for index, entry in enumerate(document["image_info"]):
        image = held.get((doc, index))
        if image is None:
            reason = left_out.get((doc, index))
            if reason is not None:
                stats.images_left_out[reason] += 1
            continue
        if image.image_name != entry["image_name"]:
            stats.images_not_matching_status += 1
            continue
        data = _read_inside(data_dir, image.path)
        if data is None:
            stats.images_missing += 1
            continue
        entry["image_base64"] = base64.b64encode(data).decode("ascii")
        embedded += 1
        stats.image_bytes += len(data)
        stats.images_below_loader_floor += below_loader_floor(len(data))
    return embedded


def iter_samples(
    docs_path: str | os.PathLike,
    shard: int,
    held: dict[tuple[int, int], HeldImage],
    data_dir: str | os.PathLike,
    stats: SampleStats,
    left_out: Mapping[tuple[int, int], str] | None = None,
    skip_url_duplicates: bool = False,
) -> Iterator[Sample]:
    """Yield the shard's samples in line order, one document in memory at a time; ``stats``
    is filled in as they go. ``left_out``: the images ``left_out_images`` names, counted;
    ``skip_url_duplicates``: documents mmc4 marks ``could_have_url_duplicate`` get no sample."""
    left_out = left_out or {}
    data_dir = Path(data_dir)
    with open(docs_path, "rb") as handle:
        for doc, line in enumerate(handle):
            stats.documents += 1
            document, by_stdlib = parse_json(line)
            if validate_document(document) is not None:
                stats.left_out["malformed"] += 1
                continue
            stats.images += len(document["image_info"])
            if not document["image_info"]:
                stats.left_out["no_images"] += 1
                continue
            if skip_url_duplicates and document.get("could_have_url_duplicate"):
                stats.left_out["url_duplicate"] += 1
                continue
            embedded = _embed(document, doc, held, data_dir, stats, left_out)
            if not embedded:
                stats.left_out["no_image_held"] += 1
                continue
            stats.images_embedded += embedded
            stats.samples += 1
            yield Sample(sample_key(shard, doc), _dump(document, by_stdlib))
