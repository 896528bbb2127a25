"""Where a shard's file lives and how to stream its lines, whatever the storage or compression.

`MMC4_DOCS_URL` is either a template containing `{shard}` (any fsspec URL or a plain path) or a
local folder holding shard files under their usual names. Compression is recognised by the
file's first bytes, not its name, since mirrors rename files.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlparse

SHARD_PLACEHOLDER = "{shard}"
ZIP_MAGIC, EMPTY_ZIP_MAGIC, GZIP_MAGIC = b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b"
CHUNK = 1 << 20
HTTP_TIMEOUT_SECONDS = 60
# docs_no_face_shard_42_v2.jsonl.zip, docs_shard_42_v3.jsonl, 42.jsonl.gz, ...
SHARD_FILE_NAME = re.compile(
    r"^(?:.*shard[_-]?)?(?P<number>\d+)(?:[_-]v\d+)?\.jsonl(?P<compression>\.gz|\.zip)?$",
    re.IGNORECASE,
)
COMPRESSION_PREFERENCE = {"": 0, ".gz": 1, ".zip": 2}
READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, zipfile.BadZipFile)


class ShardSourceError(RuntimeError):
    """A shard's source cannot be found or read; the message names the shard and the source."""


def _describe(source: str, shard: int | None) -> str:
    return f"shard {shard} ({source})" if shard is not None else f"shard source {source}"


def _local_path(url: str) -> Path | None:
    """The filesystem path of a plain path or file:// URL; None for any other URL."""
    if url.startswith("file://"):
        return Path(unquote(urlparse(url).path))
    if "://" in url:
        return None
    return Path(url).expanduser()


def shard_file_candidates(folder: Path, shard: int) -> list[Path]:
    """Files in ``folder`` (or its immediate subfolders) named for ``shard``, best first.

    Best means: uncompressed, then .gz, then .zip; then the shorter name; then alphabetical.
    Numbers match whole (shard 42 never matches 142 or 420; leading zeros are allowed).
    """
    found = []
    for directory in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        for entry in os.scandir(directory):
            match = SHARD_FILE_NAME.match(entry.name)
            if match and int(match["number"]) == shard and entry.is_file():
                rank = COMPRESSION_PREFERENCE[(match["compression"] or "").lower()]
                found.append((rank, len(entry.name), entry.path))
    return [Path(path) for *_, path in sorted(found)]


def resolve_shard_source(docs_url: str | None, shard: int) -> str:
    """Turn `MMC4_DOCS_URL` and a shard number into the URL or path of the shard's file.

    A template has `{shard}` replaced. A local folder (plain path or file://) is searched with
    `shard_file_candidates`; when several files match, the first in that order is used.
    """
    if not docs_url or not docs_url.strip():
        raise ShardSourceError(
            f"shard {shard}: no shard source configured. Set MMC4_DOCS_URL to a template "
            f"containing {SHARD_PLACEHOLDER} (any fsspec URL: http(s)://, file://, s3://, hf://, "
            "or a plain path), e.g. https://example.org/docs_shard_{shard}_v2.jsonl.zip, "
            "or to a local folder holding the shard files"
        )
    docs_url = docs_url.strip()
    if SHARD_PLACEHOLDER in docs_url:
        return docs_url.replace(SHARD_PLACEHOLDER, str(shard))
    folder = _local_path(docs_url)
    if folder is None or not folder.is_dir():
        raise ShardSourceError(
            f"shard {shard}: MMC4_DOCS_URL={docs_url!r} contains no {SHARD_PLACEHOLDER} "
            "placeholder and is not an existing local folder"
        )
    candidates = shard_file_candidates(folder, shard)
    if not candidates:
        raise ShardSourceError(
            f"shard {shard}: no file for it in {folder} (or its subfolders); looked for names "
            f"like docs_no_face_shard_{shard}_v2.jsonl.zip, docs_shard_{shard}_v3.jsonl, "
            f"{shard}.jsonl, uncompressed or with .gz or .zip"
        )
    return str(candidates[0])


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _spool(stream: IO[bytes], stack: ExitStack) -> tuple[Path, str]:
    """Copy a remote stream to a temporary file (removed on exit), hashing on the way.

    Zip archives need a seekable file; the spool also lets the hash cover the exact bytes read.
    """
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mmc4_shard_")))
    path, digest = folder / "source", hashlib.sha256()
    with open(path, "wb") as out:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
    return path, digest.hexdigest()


def _fetch_http(url: str, stack: ExitStack) -> tuple[Path, str]:
    """Download with requests (fsspec's http needs aiohttp, which the project does not ship)."""
    import requests

    try:
        with requests.get(url, stream=True, timeout=HTTP_TIMEOUT_SECONDS) as response:
            if response.status_code == 404:
                raise FileNotFoundError(f"HTTP 404 for {url}")
            response.raise_for_status()
            response.raw.decode_content = True
            return _spool(response.raw, stack)
    except requests.RequestException as exc:
        raise OSError(str(exc)) from exc


def _fetch(source: str, stack: ExitStack) -> tuple[Path, str]:
    """A local, seekable copy of ``source`` (the file itself when local) and its sha256."""
    local = _local_path(source)
    if local is not None:
        if not local.is_file():
            raise FileNotFoundError(f"no such file: {local}")
        return local, _sha256_of(local)
    if source.startswith(("http://", "https://")):
        return _fetch_http(source, stack)
    import fsspec

    with fsspec.open(source, "rb") as stream:
        return _spool(stream, stack)


def _single_member(archive: zipfile.ZipFile) -> zipfile.ZipInfo:
    """The one real member: directory entries and macOS junk (__MACOSX/, ._*) are ignored."""
    members = [
        info
        for info in archive.infolist()
        if not info.is_dir()
        and not info.filename.startswith("__MACOSX/")
        and not Path(info.filename).name.startswith("._")
    ]
    if len(members) != 1:
        names = ", ".join(info.filename for info in members[:5]) or "none"
        raise ValueError(
            f"a shard zip must hold exactly one file, this one holds {len(members)}: {names}"
        )
    return members[0]


def _decompressed(path: Path, stack: ExitStack) -> tuple[IO[bytes], str]:
    """Open ``path`` as a stream of decompressed bytes; return it and the compression found."""
    raw = stack.enter_context(open(path, "rb"))
    magic = raw.read(4)
    raw.seek(0)
    if not magic:
        raise ValueError("the file is empty")
    if magic in (ZIP_MAGIC, EMPTY_ZIP_MAGIC):
        archive = stack.enter_context(zipfile.ZipFile(raw))
        return stack.enter_context(archive.open(_single_member(archive))), "zip"
    if magic.startswith(GZIP_MAGIC):
        return stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb")), "gzip"
    return raw, "none"


class ShardLines(Iterator[bytes]):
    """The decompressed lines of a shard, turning read errors into ShardSourceError.

    Also carries what was learnt opening it: `sha256` of the source bytes as fetched and the
    `compression` found ("zip", "gzip" or "none").
    """

    def __init__(self, lines: Iterator[bytes], description: str, sha256: str, compression: str):
        self._lines, self.description = lines, description
        self.sha256, self.compression = sha256, compression

    def __next__(self) -> bytes:
        try:
            return next(self._lines)
        except StopIteration:
            raise
        except READ_ERRORS as exc:
            raise ShardSourceError(
                f"{self.description} is corrupt or truncated: {type(exc).__name__}: {exc}"
            ) from exc


@contextmanager
def open_shard_lines(source: str, shard: int | None = None) -> Iterator[ShardLines]:
    """Stream the decompressed lines of ``source`` (zip, gzip or plain, found by magic bytes).

    Memory stays bounded: lines are read one at a time through buffered streams. Local files
    are read where they are; remote ones are first spooled to a temporary file that is deleted
    on exit. ``shard``, when given, is named in error messages.
    """
    description = _describe(source, shard)
    with ExitStack() as stack:
        try:
            path, sha256 = _fetch(source, stack)
            stream, compression = _decompressed(path, stack)
        except ImportError as exc:
            raise ShardSourceError(f"cannot open {description}: {exc}") from exc
        except FileNotFoundError as exc:
            raise ShardSourceError(f"{description} not found: {exc}") from exc
        except READ_ERRORS as exc:
            raise ShardSourceError(
                f"cannot read {description}: {type(exc).__name__}: {exc}"
            ) from exc
        yield ShardLines(iter(stream), description, sha256, compression)
