"""A streaming tar writer for samples whose bytes depend on nothing but the samples.

Each sample is one `{key}.json` member. Member metadata is fixed (mtime 0, owner 0:0 with empty
names, mode 0444, ustar format) and members are written in the order given, so building the
same samples again gives the same tar byte for byte. The tar is streamed: only the member being
written is in memory.
"""

from __future__ import annotations

import io
import tarfile
from typing import IO

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10240: a streamed tar is padded to a whole record


def member_bytes(payload_size: int) -> int:
    """What one member adds to the tar: its header block plus its data padded to blocks."""
    return BLOCK + -(-payload_size // BLOCK) * BLOCK


def tar_bytes(members_bytes: int) -> int:
    """The size of a finished tar whose members take ``members_bytes``."""
    ended = members_bytes + 2 * BLOCK  # two zero blocks end the archive
    return -(-ended // RECORD) * RECORD


class SampleTarWriter:
    """Writes samples into an open binary file; `close` ends the archive (not the file)."""

    def __init__(self, fileobj: IO[bytes]):
        self._tar = tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.USTAR_FORMAT)
        self.samples = 0
        self.members_bytes = 0

    def write(self, key: str, payload: bytes) -> None:
        info = tarfile.TarInfo(f"{key}.json")
        info.size = len(payload)
        info.mtime = 0
        info.mode = 0o444
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(payload))
        self.samples += 1
        self.members_bytes += member_bytes(len(payload))

    @property
    def bytes(self) -> int:
        """The tar's size once closed."""
        return tar_bytes(self.members_bytes)

    def close(self) -> None:
        self._tar.close()
