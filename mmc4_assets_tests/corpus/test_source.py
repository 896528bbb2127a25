"""Finding a shard's file and streaming its lines, on real files and a real loopback HTTP server."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import threading
import tracemalloc
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mmc4_assets.corpus.source import (
    ShardLines,
    ShardSourceError,
    open_shard_lines,
    resolve_shard_source,
)

LINES = [b'{"a": 1}\n', b'{"b": 2}\n', b'{"c": 3}\n']


def write_shard_file(path: Path, lines: list[bytes] = LINES, compression: str = "") -> Path:
    """Write ``lines`` to ``path``, zipped ("zip", single member), gzipped ("gz") or plain."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = b"".join(lines)
    if compression == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(path.name.removesuffix(".zip"), payload)
    elif compression == "gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serve ``folder`` over real HTTP on 127.0.0.1; yield the base URL."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def read_all(source: str, shard: int | None = 42) -> list[bytes]:
    with open_shard_lines(source, shard=shard) as lines:
        return list(lines)


@pytest.mark.parametrize(
    "name",
    [
        "docs_no_face_shard_42_v2.jsonl.zip",
        "docs_shard_42_v3.jsonl",
        "42.jsonl",
        "42.jsonl.gz",
        "docs_no_face_shard_0042_v3.jsonl.zip",
    ],
)
def test_folder_finds_each_naming_scheme(tmp_path: Path, name: str):
    write_shard_file(tmp_path / "docs_shard_142_v2.jsonl")
    write_shard_file(tmp_path / "420.jsonl")
    write_shard_file(tmp_path / "docs_shard_4_v2.jsonl")
    expected = write_shard_file(tmp_path / name)
    assert resolve_shard_source(str(tmp_path), 42) == str(expected)
    assert resolve_shard_source(f"file://{tmp_path}", 42) == str(expected)


def test_folder_prefers_uncompressed_then_shortest(tmp_path: Path):
    write_shard_file(tmp_path / "docs_no_face_shard_7_v2.jsonl.zip", compression="zip")
    write_shard_file(tmp_path / "docs_shard_7_v2.jsonl.gz", compression="gz")
    assert resolve_shard_source(str(tmp_path), 7).endswith("docs_shard_7_v2.jsonl.gz")
    write_shard_file(tmp_path / "docs_shard_7_v2.jsonl")
    write_shard_file(tmp_path / "7.jsonl")
    assert resolve_shard_source(str(tmp_path), 7).endswith("/7.jsonl")


def test_folder_without_the_shard_lists_what_it_looked_for(tmp_path: Path):
    write_shard_file(tmp_path / "docs_shard_142_v2.jsonl")
    write_shard_file(tmp_path / "420.jsonl.gz")
    with pytest.raises(ShardSourceError) as caught:
        resolve_shard_source(str(tmp_path), 42)
    message = str(caught.value)
    assert "shard 42" in message and str(tmp_path) in message
    assert "docs_no_face_shard_42_v2.jsonl.zip" in message and "42.jsonl" in message


@pytest.mark.parametrize("docs_url", [None, "", "   "])
def test_unset_url_says_how_to_set_it(docs_url):
    with pytest.raises(ShardSourceError) as caught:
        resolve_shard_source(docs_url, 42)
    message = str(caught.value)
    assert "shard 42" in message and "MMC4_DOCS_URL" in message and "{shard}" in message
    assert "local folder" in message


def test_url_without_placeholder_that_is_not_a_folder(tmp_path: Path):
    with pytest.raises(ShardSourceError, match="shard 42.*no \\{shard\\} placeholder"):
        resolve_shard_source("https://example.org/shard.jsonl", 42)
    with pytest.raises(ShardSourceError, match="not an existing local folder"):
        resolve_shard_source(str(tmp_path / "missing"), 42)


def test_templates_are_formatted():
    assert resolve_shard_source("/data/docs_shard_{shard}_v2.jsonl.zip", 42) == (
        "/data/docs_shard_42_v2.jsonl.zip"
    )
    assert resolve_shard_source("file:///d/{shard}.jsonl", 0) == "file:///d/0.jsonl"
    assert resolve_shard_source("hf://datasets/x/y/{shard}.jsonl.zip", 7).endswith("/7.jsonl.zip")


@pytest.mark.parametrize("compression", ["", "gz", "zip"])
@pytest.mark.parametrize("misleading_name", [False, True])
def test_compression_is_detected_by_magic_bytes(tmp_path: Path, compression, misleading_name):
    name = "42.jsonl" if misleading_name else f"42.jsonl.{compression}".rstrip(".")
    path = write_shard_file(tmp_path / name, compression=compression)
    with open_shard_lines(str(path), shard=42) as lines:
        assert list(lines) == LINES
        assert lines.compression == {"": "none", "gz": "gzip", "zip": "zip"}[compression]
        assert lines.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_all(f"file://{path}") == LINES


def test_zip_ignores_directories_and_macos_junk(tmp_path: Path):
    path = tmp_path / "42.jsonl.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data/", b"")
        archive.writestr("__MACOSX/data/._42.jsonl", b"junk")
        archive.writestr("data/42.jsonl", b"".join(LINES))
    assert read_all(str(path)) == LINES


def test_multi_member_zip_is_refused(tmp_path: Path):
    path = tmp_path / "42.jsonl.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.jsonl", b"{}\n")
        archive.writestr("b.jsonl", b"{}\n")
    with pytest.raises(ShardSourceError, match="shard 42.*exactly one file.*a.jsonl, b.jsonl"):
        read_all(str(path))


def broken_sources(tmp_path: Path) -> dict[str, Path]:
    """Truncated zip, truncated and corrupted gzip, empty file, missing file."""
    big = [b'{"n": %d, "pad": "%s"}\n' % (i, b"x" * (i % 50)) for i in range(5000)]
    zipped = write_shard_file(tmp_path / "z" / "42.jsonl.zip", big, "zip").read_bytes()
    gzipped = gzip.compress(b"".join(big))
    corrupted = bytearray(gzipped)
    corrupted[len(corrupted) // 2 : len(corrupted) // 2 + 64] = b"\x00" * 64
    files = {
        "truncated zip": zipped[: len(zipped) // 2],
        "truncated gzip": gzipped[: len(gzipped) // 2],
        "corrupt gzip": bytes(corrupted),
        "empty file": b"",
    }
    paths = {}
    for label, data in files.items():
        paths[label] = tmp_path / label.replace(" ", "_") / "42.jsonl.gz"
        paths[label].parent.mkdir()
        paths[label].write_bytes(data)
    paths["missing file"] = tmp_path / "nowhere" / "42.jsonl"
    return paths


def test_broken_sources_raise_errors_naming_shard_and_source(tmp_path: Path):
    for label, path in broken_sources(tmp_path).items():
        with pytest.raises(ShardSourceError) as caught:
            read_all(str(path))
        assert "shard 42" in str(caught.value) and str(path) in str(caught.value), label


def test_http_template_on_a_real_loopback_server(tmp_path: Path):
    write_shard_file(tmp_path / "docs_shard_42_v2.jsonl.zip", compression="zip")
    with serve_folder(tmp_path) as base:
        source = resolve_shard_source(f"{base}/docs_shard_{{shard}}_v2.jsonl.zip", 42)
        with open_shard_lines(source, shard=42) as lines:
            assert list(lines) == LINES
            expected = (tmp_path / "docs_shard_42_v2.jsonl.zip").read_bytes()
            assert lines.sha256 == hashlib.sha256(expected).hexdigest()
        with pytest.raises(ShardSourceError, match="shard 43.*not found"):
            read_all(resolve_shard_source(f"{base}/docs_shard_{{shard}}_v2.jsonl.zip", 43), 43)


def test_lines_are_streamed_not_loaded(tmp_path: Path):
    line = b'{"text_list": ["' + b"y" * 1000 + b'"]}\n'
    path = write_shard_file(tmp_path / "42.jsonl.gz", [line] * 20000, "gz")  # ~20 MB unpacked
    tracemalloc.start()
    try:
        with open_shard_lines(str(path), shard=42) as lines:
            assert isinstance(lines, ShardLines)
            assert next(lines) == line
            count = 1 + sum(1 for _ in lines)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 20000
    assert peak < 4_000_000
