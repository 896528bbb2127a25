"""Pack a shard into `webdataset/{shard}-{part}.tar` parts plus its sizes sidecar.

Parts close at a number of documents or of bytes, whichever comes first (a single sample larger
than the byte limit gets a part of its own). Each part is written whole or not at all; the sizes
sidecar is written after the last part, then parts left over from an earlier, larger build are
removed, so the sidecar always lists the parts of the last complete build.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pandas as pd

from mmc4_assets.storage.layout import part_name
from mmc4_assets.training.files import (
    existing_parts,
    open_for_write,
    part_path,
    remove,
    sizes_path,
)
from mmc4_assets.training.samples import (
    Sample,
    SampleStats,
    held_images,
    iter_samples,
    left_out_images,
)
from mmc4_assets.training.tar_writer import SampleTarWriter, member_bytes, tar_bytes


@dataclass(frozen=True)
class PartLimits:
    """When a part is full: this many documents, or this many bytes of tar."""

    documents: int = 1000
    bytes: int = 512 * 2**20

    def __post_init__(self):
        if self.documents < 1 or self.bytes < 1:
            raise ValueError(f"part limits must be positive, got {self}")


@dataclass(frozen=True)
class PartInfo:
    name: str
    samples: int
    bytes: int


@dataclass
class PackResult:
    stats: SampleStats
    parts: list[PartInfo] = field(default_factory=list)
    removed_parts: list[str] = field(default_factory=list)
    sizes_path: Path | None = None

    @property
    def bytes(self) -> int:
        return sum(part.bytes for part in self.parts)


class _PartSink:
    """Routes samples into numbered parts, opening the next when the current one is full."""

    def __init__(self, data_dir: Path, shard: int, limits: PartLimits, stack: contextlib.ExitStack):
        self.data_dir, self.shard, self.limits, self.stack = data_dir, shard, limits, stack
        self.parts: list[PartInfo] = []
        self._writer: SampleTarWriter | None = None
        self._part_stack: contextlib.ExitStack | None = None

    def _full_for(self, payload_size: int) -> bool:
        writer = self._writer
        if writer is None:
            return True
        if writer.samples >= self.limits.documents:
            return True
        grown = tar_bytes(writer.members_bytes + member_bytes(payload_size))
        return grown > self.limits.bytes

    def add(self, sample: Sample) -> None:
        if self._full_for(len(sample.json)):
            self._finish_part()
            self._open_part()
        self._writer.write(sample.key, sample.json)

    def _open_part(self) -> None:
        part_stack = self.stack.enter_context(contextlib.ExitStack())
        handle = part_stack.enter_context(
            open_for_write(part_path(self.data_dir, self.shard, len(self.parts)))
        )
        self._writer, self._part_stack = SampleTarWriter(handle), part_stack

    def _finish_part(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._part_stack.close()  # the part appears under its final name here
        name = part_name(self.shard, len(self.parts))
        self.parts.append(PartInfo(name, self._writer.samples, self._writer.bytes))
        self._writer = self._part_stack = None

    def finish(self) -> list[PartInfo]:
        self._finish_part()
        return self.parts


def pack_shard(
    docs_path: str | os.PathLike,
    status: pd.DataFrame | None,
    data_dir: str | os.PathLike,
    shard: int,
    limits: PartLimits = PartLimits(),
    skip_url_duplicates: bool = False,
) -> PackResult:
    """Write the shard's training tars and sizes sidecar from its reassigned documents and its
    status table; return what was written and counted. Stand-ins and tiny images are never
    embedded (they are not ``ok``); with ``skip_url_duplicates``, documents mmc4 marks
    ``could_have_url_duplicate`` are left out too."""
    data_dir = Path(data_dir)
    result = PackResult(stats=SampleStats())
    held = held_images(status)
    with contextlib.ExitStack() as stack:
        sink = _PartSink(data_dir, shard, limits, stack)
        samples = iter_samples(
            docs_path, shard, held, data_dir, result.stats, left_out_images(status),
            skip_url_duplicates,
        )  # fmt: skip
        for sample in samples:
            sink.add(sample)
        result.parts = sink.finish()
    result.sizes_path = sizes_path(data_dir, shard)
    with open_for_write(result.sizes_path) as handle:
        sizes = {part.name: part.samples for part in result.parts}
        handle.write(orjson.dumps(sizes, option=orjson.OPT_INDENT_2) + b"\n")
    written = {part.name for part in result.parts}
    for leftover in existing_parts(data_dir, shard):
        if leftover.name not in written:
            remove(leftover)
            result.removed_parts.append(leftover.name)
    return result
