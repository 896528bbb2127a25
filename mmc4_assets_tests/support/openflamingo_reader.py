"""Read training tars as OpenFlamingo's mmc4 pipeline does, and check what its loader reads.

OpenFlamingo (`open_flamingo/train/data.py`, newest main) streams tars with webdataset's
`url_opener` and `tar_file_expander`, groups members into samples by key (`fname` split by
`base_plus_ext`), keeps the `json` member (`wds.to_tuple("json")`), and `preprocess_interleaved`
then reads from it: `is_gpt` (absent for mmc4), `text_list`, `similarity_matrix` (rows =
`image_info` entries), and each `image_info[i].image_base64` (base64 of an image Pillow opens;
skipped when `len(bytes) // 1000 <= 10`), indexing the matrix rows by the positions of the images
it kept. `check_sample` asserts each of those, without torch (the suite runs on a plain venv).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import numpy as np
import webdataset as wds
from PIL import Image
from webdataset.tariterators import base_plus_ext, tar_file_expander, url_opener

MIN_KB = 10


def iter_file_members(urls: list[str]) -> Iterator[dict]:
    """The members as OpenFlamingo's `group_by_keys_nothrow` receives them."""
    yield from tar_file_expander(url_opener([{"url": url} for url in urls]))


def iter_json_samples(urls: list[str]) -> Iterator[tuple[str, bytes]]:
    """(key, json bytes) per sample: tarfile_to_samples then to_tuple("__key__", "json")."""
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls), wds.tarfile_to_samples(), wds.to_tuple("__key__", "json")
    )
    yield from pipeline


def check_sample(payload: bytes) -> dict:
    """What preprocess_interleaved reads, checked; returns the document and what it would use."""
    info = json.loads(payload)
    assert "is_gpt" not in info
    sentences = info["text_list"]
    assert all(isinstance(s, str) for s in sentences)
    sim_matrix = np.array(info["similarity_matrix"], dtype=float)
    assert sim_matrix.shape == (len(info["image_info"]), len(sentences))
    valid, below_floor, embedded = [], 0, 0
    for i, entry in enumerate(info["image_info"]):
        if "image_base64" not in entry:
            continue
        embedded += 1
        raw = base64.b64decode(entry["image_base64"], validate=True)
        if len(raw) // 1000 <= MIN_KB:
            below_floor += 1
            continue
        with Image.open(io.BytesIO(raw)) as image:
            assert image.convert("RGB").size[0] > 0
        valid.append(i)
    assert embedded > 0, "a sample must embed at least one image"
    assert sim_matrix[valid].shape == (len(valid), len(sentences))
    return {"document": info, "valid": valid, "below_floor": below_floor, "embedded": embedded}


def split_key(key: str) -> tuple[int, int]:
    """(shard, line) of a sample key; also checks base_plus_ext gives the key back."""
    assert base_plus_ext(f"{key}.json") == (key, "json")
    shard, line = key.split("-")
    return int(shard), int(line)
