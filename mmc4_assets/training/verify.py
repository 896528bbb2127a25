"""Re-read a shard's training tars: the parts the sizes sidecar lists, and what they hold."""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field

import orjson

from mmc4_assets.training.files import existing_parts, sizes_path, webdataset_dir
from mmc4_assets.training.samples import KEY_PATTERN, parse_json


@dataclass
class TarCounts:
    """What the tars of a shard hold, counted by reading them."""

    samples: int = 0
    images_embedded: int = 0
    problems: list[str] = field(default_factory=list)


def _read_sizes(path) -> dict[str, int] | str:
    try:
        sizes = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return f"no sizes sidecar at {path}"
    except orjson.JSONDecodeError as exc:
        return f"sizes sidecar {path} is not JSON ({exc})"
    if not isinstance(sizes, dict) or not all(
        isinstance(count, int) and count >= 0 for count in sizes.values()
    ):
        return f"sizes sidecar {path} is not a {{tar name: sample count}} object"
    return sizes


def _count_part(path, shard_prefix: str, counts: TarCounts, seen: set[str]) -> int:
    """Count one part's samples, checking each member; problems go to ``counts``."""
    samples = 0
    with tarfile.open(path, mode="r|") as tar:
        for member in tar:
            name = member.name
            key, _, extension = name.partition(".")
            if not member.isreg() or extension != "json" or not KEY_PATTERN.fullmatch(key):
                counts.problems.append(f"{path.name}: unexpected member {name!r}")
                continue
            if not key.startswith(shard_prefix) or key in seen:
                counts.problems.append(f"{path.name}: key {key} is another shard's or repeated")
            seen.add(key)
            document, _ = parse_json(tar.extractfile(member).read())
            if not isinstance(document, dict):
                counts.problems.append(f"{path.name}: {name} is not a JSON object")
                continue
            images = document.get("image_info") or []
            if len(document.get("similarity_matrix") or []) != len(images):
                counts.problems.append(f"{path.name}: {name} image_info and matrix misaligned")
            embedded = sum("image_base64" in entry for entry in images)
            if not embedded:
                counts.problems.append(f"{path.name}: {name} embeds no image")
            counts.images_embedded += embedded
            samples += 1
    return samples


def count_training_shards(data_dir: str | os.PathLike, shard: int) -> TarCounts:
    """Open every part of the shard and check it against the sizes sidecar."""
    counts = TarCounts()
    sizes = _read_sizes(sizes_path(data_dir, shard))
    if isinstance(sizes, str):
        counts.problems.append(sizes)
        return counts
    on_disk = {path.name for path in existing_parts(data_dir, shard)}
    for name in sorted(on_disk - set(sizes)):
        counts.problems.append(f"{name} is on disk but not in the sizes sidecar")
    seen: set[str] = set()
    prefix = f"{int(shard):05d}-"
    for name, expected in sizes.items():
        path = webdataset_dir(data_dir) / name
        if name not in on_disk:
            counts.problems.append(f"{name} is in the sizes sidecar but not on disk")
            continue
        try:
            found = _count_part(path, prefix, counts, seen)
        except (tarfile.TarError, OSError) as exc:
            counts.problems.append(f"{name}: unreadable tar ({exc})")
            continue
        if found != expected:
            counts.problems.append(f"{name}: {found} samples, the sizes sidecar says {expected}")
        counts.samples += found
    return counts
