"""Where a shard's training tars live under the data folder, and the one place they are opened.

Every file of this package is written through `open_for_write`, so moving the tars to object
storage is a change to that function (and `remove`) alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from mmc4_assets.corpus.atomic import atomic_write
from mmc4_assets.storage import layout


def webdataset_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / layout.webdataset_folder()


def part_path(data_dir: str | os.PathLike, shard: int, part: int) -> Path:
    return Path(data_dir) / layout.training_part(shard, part)


def sizes_path(data_dir: str | os.PathLike, shard: int) -> Path:
    """The shard's sizes sidecar: {tar name: sample count}, the layout of a `sizes.json`."""
    return Path(data_dir) / layout.training_sizes(shard)


def existing_parts(data_dir: str | os.PathLike, shard: int) -> list[Path]:
    """The shard's tars on disk now, in part order (whatever build left them)."""
    folder = webdataset_dir(data_dir)
    if not folder.is_dir():
        return []
    numbered = []
    for path in folder.iterdir():
        number = layout.part_number(shard, path.name)
        if number is not None and path.is_file():
            numbered.append((number, path))
    return [path for _, path in sorted(numbered)]


@contextlib.contextmanager
def open_for_write(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A writable binary file that appears under ``path`` whole, and only if the block succeeds."""
    with atomic_write(path, "wb") as handle:
        yield handle


def remove(path: str | os.PathLike) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
