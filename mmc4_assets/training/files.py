"""Where a shard's training tars live under the data folder, and the one place they are opened.

Every file of this package is written through `open_for_write`, so moving the tars to object
storage is a change to that function (and `remove`) alone.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from mmc4_assets.corpus.atomic import atomic_write

WEBDATASET_DIR = "webdataset"


def webdataset_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / WEBDATASET_DIR


def part_name(shard: int, part: int) -> str:
    """`{shard}-{part}.tar`, parts numbered 000, 001, ..."""
    return f"{int(shard)}-{int(part):03d}.tar"


def part_path(data_dir: str | os.PathLike, shard: int, part: int) -> Path:
    return webdataset_dir(data_dir) / part_name(shard, part)


def sizes_path(data_dir: str | os.PathLike, shard: int) -> Path:
    """The shard's sizes sidecar: {tar name: sample count}, the layout of a `sizes.json`."""
    return webdataset_dir(data_dir) / f"{int(shard)}.sizes.json"


def existing_parts(data_dir: str | os.PathLike, shard: int) -> list[Path]:
    """The shard's tars on disk now, in part order (whatever build left them)."""
    pattern = re.compile(rf"{int(shard)}-(\d{{3,}})\.tar")
    folder = webdataset_dir(data_dir)
    if not folder.is_dir():
        return []
    numbered = []
    for path in folder.iterdir():
        match = pattern.fullmatch(path.name)
        if match and path.is_file():
            numbered.append((int(match.group(1)), path))
    return [path for _, path in sorted(numbered)]


@contextlib.contextmanager
def open_for_write(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A writable binary file that appears under ``path`` whole, and only if the block succeeds."""
    with atomic_write(path, "wb") as handle:
        yield handle


def remove(path: str | os.PathLike) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
