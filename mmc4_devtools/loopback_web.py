"""A multi-host image "web" on loopback addresses, for tests, the offline demo and benchmarks.

Why: the downloader must be exercised against real sockets (keep-alive, per-host limits,
redirects, broken bodies) without touching the internet. Each simulated host is one
ThreadingHTTPServer on its own loopback address (127.0.0.1, 127.0.0.2, ...: Linux routes all of
127/8 to lo), so per-host politeness shows up as per-server concurrency.

Content is generated from the path alone, so every run, process and machine sees the same bytes:

- ``/img/{w}x{h}/{seed}.jpg|png``: a noisy gradient of that size, with ETag/Last-Modified and 304s.
- ``/fault/...``: one path family per failure the downloader must classify (see ``_FAULTS``).

(~700 lines in one module, in three parts that share the private server and handler: the
images (rendering, caches), the request handler with its catalogue of faults (a few lines each,
beside the handler that serves them), and ``LoopbackWeb`` with the benchmark's URL builder.)
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import io
import math
import os
import random
import re
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

MAX_SIDE = 4000  # refuse to render anything bigger: a typo must not eat the test machine's RAM
OVERSIZE_BYTES = 200 * 1024 * 1024
NOLENGTH_CAP_BYTES = 256 * 1024 * 1024  # "until the client hangs up", but never forever
_CHUNK = 64 * 1024
_IMG_PATH = re.compile(r"^/img/(\d+)x(\d+)/([^/]+)\.(jpg|jpeg|png)$")

# --------------------------------------------------------------------------- content


@functools.cache
def _noise_tile(key: int, amplitude: int) -> np.ndarray:
    """A small reusable noise tile: tiling it is far cheaper than drawing w*h random numbers."""
    rng = np.random.default_rng(key)
    return rng.integers(0, amplitude, size=(256, 256, 3), dtype=np.uint8)


def _tiled(tile: np.ndarray, height: int, width: int) -> np.ndarray:
    reps = (-(-height // tile.shape[0]), -(-width // tile.shape[1]), 1)
    return np.tile(tile, reps)[:height, :width]


def render_image(width: int, height: int, seed: int, fmt: str) -> bytes:
    """A deterministic noisy gradient; the noise keeps sizes realistic (~40 KB JPEG at 800x600)."""
    rng = np.random.default_rng(seed)
    corners = rng.integers(30, 210, size=(2, 2, 3), dtype=np.uint8)
    base = Image.fromarray(corners).resize((width, height), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    if fmt in ("jpg", "jpeg"):
        pixels = np.asarray(base) + _tiled(_noise_tile(seed % 8, 14), height, width)
        Image.fromarray(pixels).save(out, "JPEG", quality=85)
    else:
        # PNGs on the web are mostly flat graphics: blocky, few colours, compressible.
        sw, sh = max(1, width // 8), max(1, height // 8)
        small = np.asarray(base.resize((sw, sh))) + _tiled(_noise_tile(seed % 8, 40), sh, sw)
        img = Image.fromarray(small).resize((width, height), Image.Resampling.NEAREST)
        img.quantize(64, method=Image.Quantize.FASTOCTREE).save(out, "PNG", compress_level=1)
    return out.getvalue()


@functools.lru_cache(maxsize=256)
def _memory_cached(width: int, height: int, seed: int, fmt: str) -> bytes:
    return render_image(width, height, seed, fmt)


def _disk_cached(cache_dir: Path, width: int, height: int, seed: int, fmt: str) -> bytes:
    """Bodies persist across runs so a 25k-image benchmark renders each image once, ever."""
    path = cache_dir / f"{width}x{height}_{seed}.{fmt}"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        body = render_image(width, height, seed, fmt)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_bytes(body)
        os.replace(tmp, path)
        return body


def _seed_of(text: str) -> int:
    return int(text) if text.isdigit() else zlib.crc32(text.encode())


def parse_image_path(path: str) -> tuple[int, int, int, str] | None:
    """``/img/{w}x{h}/{seed}.{ext}`` -> (w, h, seed, ext), or None when it is not one."""
    match = _IMG_PATH.match(path)
    if not match:
        return None
    width, height = int(match[1]), int(match[2])
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        return None
    fmt = "jpg" if match[4] == "jpeg" else match[4]
    return width, height, _seed_of(match[3]), fmt


def _warm_one(args: tuple[str, int, int, int, str]) -> None:
    _disk_cached(Path(args[0]), *args[1:])


def warm_cache(cache_dir: str | os.PathLike, urls: Iterable[str], processes: int = 0) -> int:
    """Render every ``/img/`` body of ``urls`` into ``cache_dir`` up front, in parallel.

    Why: benchmarks must time the downloader, not our image encoder. Returns how many were new.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    todo = set()
    for url in urls:
        spec = parse_image_path(urlsplit(url).path)
        if spec and not (cache / f"{spec[0]}x{spec[1]}_{spec[2]}.{spec[3]}").exists():
            todo.add((str(cache), *spec))
    if todo:
        with ProcessPoolExecutor(processes or os.cpu_count() or 1) as pool:
            list(pool.map(_warm_one, sorted(todo), chunksize=64))
    return len(todo)


@functools.cache
def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A few-KB PNG whose header claims ``width`` x ``height``: decoders must refuse it early."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = zlib.compress(b"\0" * ((width + 1) * 100), 9)  # the first 100 rows only
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


@functools.cache
def corrupt_jpeg(seed: int = 0) -> bytes:
    """A real JPEG's headers (so sniffers say image/jpeg) followed by garbage entropy data."""
    real = render_image(320, 240, seed, "jpg")
    start_of_scan = real.index(b"\xff\xda")
    header_end = start_of_scan + 2 + int.from_bytes(real[start_of_scan + 2 : start_of_scan + 4])
    garbage = random.Random(seed).randbytes(4000).replace(b"\xff", b"\x00")
    return real[:header_end] + garbage


# --------------------------------------------------------------------------- server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], web: LoopbackWeb, host: int):
        self.web = web
        self.host = host
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn), slow for 127.0.0.x.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real image hosts
    server_version = "LoopbackWeb/1.0"
    timeout = 120  # idle keep-alive connections must not hold a thread forever
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def setup(self) -> None:
        super().setup()
        self.server.web._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.web._track(self.connection, add=False)

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, head: bool) -> None:
        web, host = self.server.web, self.server.host
        path = urlsplit(self.path).path
        count = web._begin(host, path)
        try:
            web._stopping.wait(web.latency_ms / 1000 * random.uniform(0.85, 1.15))
            if host == 0 and time.monotonic() < web.throttled_until and path != "/robots.txt":
                self.send_body(429, b"slow down\n", "text/plain", {"Retry-After": "5"})
            else:
                _route(self, web, host, path, count, head)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        finally:
            web._end(host)

    # small response helpers -------------------------------------------------------------
    def send_body(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_image(self, body: bytes, ctype: str, seed: int, headers: dict | None = None) -> None:
        etag = '"' + hashlib.blake2b(body, digest_size=8).hexdigest() + '"'
        modified = 1_500_000_000 + seed % 100_000_000
        validators = {"ETag": etag, "Last-Modified": formatdate(modified, usegmt=True)}
        if _not_modified(self.headers, etag, modified):
            self.send_response(304)
            for name, value in validators.items():
                self.send_header(name, value)
            self.end_headers()
            return
        self.send_body(200, body, ctype, {**validators, **(headers or {})})

    def start_stream(self, status: int, ctype: str, length: int | None) -> None:
        """Headers for a body we will send piecemeal (and usually not finish)."""
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length is None:
            self.send_header("Connection", "close")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True


def _not_modified(headers, etag: str, modified: int) -> bool:
    if_none_match = headers.get("If-None-Match")
    if if_none_match is not None:
        return if_none_match.strip() == "*" or etag in [t.strip() for t in if_none_match.split(",")]
    since = headers.get("If-Modified-Since")
    if since:
        try:
            return modified <= parsedate_to_datetime(since).timestamp()
        except (TypeError, ValueError):
            return False
    return False


def _route(h: _Handler, web: LoopbackWeb, host: int, path: str, count: int, head: bool) -> None:
    spec = parse_image_path(path)
    if spec is not None:
        width, height, seed, fmt = spec
        ctype = "image/png" if fmt == "png" else "image/jpeg"
        h.send_image(web.image_body(width, height, seed, fmt), ctype, seed)
        return
    parts = path.split("/")
    if len(parts) >= 3 and parts[1] == "fault":
        kind = "bomb" if parts[2].startswith("bomb") else parts[2]
        handler = _FAULTS.get(kind)
        if handler is not None:
            try:
                handler(h, web, host, path, parts[3:], count)
            except ValueError:  # a malformed number in the path
                h.send_body(400, b"bad fault path\n", "text/plain")
            return
    h.send_body(404, b"<html><body>not found</body></html>", "text/html")


# --------------------------------------------------------------------------- faults


def _fault_image(h: _Handler, web: LoopbackWeb, path: str, headers: dict | None = None) -> None:
    seed = zlib.crc32(path.encode())
    h.send_image(web.image_body(300, 200, seed, "jpg"), "image/jpeg", seed, headers)


def _status(code: int):
    def fault(h, web, host, path, rest, count):
        h.send_body(code, f"<html><body>{code}</body></html>".encode(), "text/html")

    return fault


def _flaky500(h, web, host, path, rest, count):
    if count <= int(rest[0]):
        h.send_body(500, b"<html><body>try again</body></html>", "text/html")
    else:
        _fault_image(h, web, path)


def _too_many(h, web, host, path, rest, count):
    if count <= int(rest[1]):
        h.send_body(429, b"slow down\n", "text/plain", {"Retry-After": rest[0]})
    else:
        _fault_image(h, web, path)


def _too_many_date(h, web, host, path, rest, count):
    if count <= 1:
        when = formatdate(math.ceil(time.time()) + 1, usegmt=True)
        h.send_body(429, b"slow down\n", "text/plain", {"Retry-After": when})
    else:
        _fault_image(h, web, path)


def _html(h, web, host, path, rest, count):
    page = b"<!DOCTYPE html><html><head><title>Hotlink</title></head><body>no</body></html>"
    h.send_body(200, page * 20, "image/jpeg")


def _text(h, web, host, path, rest, count):
    h.send_body(200, b"this is not an image\n" * 50, "text/plain")


def _truncated(h, web, host, path, rest, count):
    body = web.image_body(640, 480, zlib.crc32(path.encode()), "jpg")
    h.start_stream(200, "image/jpeg", len(body))
    h.wfile.write(body[: len(body) // 2])
    _hang_up(h)


def _midclose(h, web, host, path, rest, count):
    body = web.image_body(640, 480, zlib.crc32(path.encode()), "jpg")
    h.send_response(200)
    h.send_header("Content-Type", "image/jpeg")
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    part = body[: len(body) // 3]
    h.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))  # ... and never the final 0-chunk
    _hang_up(h)


def _hang_up(h: _Handler) -> None:
    h.close_connection = True
    h.wfile.flush()
    try:
        h.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _stall(h, web, host, path, rest, count):
    h.start_stream(200, "image/jpeg", 50_000)
    web._stopping.wait(web.stall_seconds)


def _slowdrip(h, web, host, path, rest, count):
    body = web.image_body(300, 200, zlib.crc32(path.encode()), "jpg")
    h.start_stream(200, "image/jpeg", len(body))
    for i in range(min(len(body), int(web.stall_seconds))):
        h.wfile.write(body[i : i + 1])
        h.wfile.flush()
        if web._stopping.wait(1.0):
            break


def _zeros(h: _Handler, web: LoopbackWeb, total: int) -> None:
    zeros = bytes(_CHUNK)
    sent = 0
    while sent < total and not web._stopping.is_set():
        h.wfile.write(zeros[: min(_CHUNK, total - sent)])
        sent += _CHUNK


def _oversize(h, web, host, path, rest, count):
    h.start_stream(200, "image/jpeg", OVERSIZE_BYTES)
    _zeros(h, web, OVERSIZE_BYTES)


def _oversize_nolength(h, web, host, path, rest, count):
    h.start_stream(200, "image/jpeg", None)
    _zeros(h, web, NOLENGTH_CAP_BYTES)


def _bomb(h, web, host, path, rest, count):
    h.send_body(200, bomb_png(), "image/png")


def _redirect(h, web, host, path, rest, count):
    hops = int(rest[0])
    if hops <= 0:
        _fault_image(h, web, path)
        return
    target = web.url(host, "/fault/redirect/" + "/".join([str(hops - 1), *rest[1:]]))
    h.send_body(302, b"", "text/html", {"Location": target})


def _redirect_private(h, web, host, path, rest, count):
    port = web._servers[0].server_port
    h.send_body(302, b"", "text/html", {"Location": f"http://127.0.0.1:{port}/img/100x100/1.jpg"})


def _gzip(h, web, host, path, rest, count):
    body = gzip.compress(web.image_body(300, 200, zlib.crc32(path.encode()), "jpg"), 6)
    h.send_body(200, body, "image/jpeg", {"Content-Encoding": "gzip"})


def _noai(h, web, host, path, rest, count):
    _fault_image(h, web, path, {"X-Robots-Tag": "noai"})


def _noimageai_other(h, web, host, path, rest, count):
    _fault_image(h, web, path, {"X-Robots-Tag": "otherbot: noimageai"})


def _corrupt(h, web, host, path, rest, count):
    h.send_body(200, corrupt_jpeg(zlib.crc32(path.encode()) % 1000), "image/jpeg")


_FAULTS = {
    "404": _status(404),
    "410": _status(410),
    "500": _status(500),
    "flaky500": _flaky500,  # /fault/flaky500/{n}/...: 500 for the first n requests of the path
    "429": _too_many,  # /fault/429/{retry_after}/{n}/...
    "429date": _too_many_date,  # Retry-After as an HTTP date ~1 s ahead, once
    "html": _html,
    "text": _text,
    "truncated": _truncated,
    "midclose": _midclose,
    "stall": _stall,
    "slowdrip": _slowdrip,
    "oversize": _oversize,
    "oversize-nolength": _oversize_nolength,
    "bomb": _bomb,  # /fault/bomb.png
    "redirect": _redirect,  # /fault/redirect/{n}/...
    "redirect-private": _redirect_private,
    "gzip": _gzip,
    "noai": _noai,
    "noimageai": _noimageai_other,
    "corrupt": _corrupt,
}


# --------------------------------------------------------------------------- the web


class LoopbackWeb:
    """``hosts`` HTTP servers on 127.0.0.1, 127.0.0.2, ...; a context manager.

    ``port=0`` gives each host its own ephemeral port; a fixed port is shared by all addresses.
    ``cache_dir`` keeps rendered images on disk across runs (benchmarks); otherwise a small
    in-memory LRU.
    """

    def __init__(
        self,
        hosts: int = 4,
        latency_ms: float = 30.0,
        *,
        port: int = 0,
        stall_seconds: float = 60.0,
        cache_dir: str | os.PathLike | None = None,
    ):
        if not 1 <= hosts <= 254:
            raise ValueError("hosts must be between 1 and 254")
        self.hosts = hosts
        self.latency_ms = latency_ms
        self.port = port
        self.stall_seconds = stall_seconds
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.base_urls: list[str] = []
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self.throttled_until = 0.0  # time.monotonic() before which the first host answers 429
        self.reset_counters()

    def throttle_first_host(self, seconds: float) -> None:
        """The busiest site throttling for a while: every request to the first host answers 429
        (Retry-After: 5) for `seconds` from now (the soak's fault, by SIGUSR1)."""
        self.throttled_until = time.monotonic() + seconds

    # lifecycle ------------------------------------------------------------------------------
    def start(self) -> LoopbackWeb:
        if self._servers:
            return self
        if self.cache_dir:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._stopping.clear()
        try:
            for host in range(self.hosts):
                server = _Server((f"127.0.0.{host + 1}", self.port), self, host)
                thread = threading.Thread(
                    target=server.serve_forever,
                    kwargs={"poll_interval": 0.05},
                    name=f"loopback-web-{host}",
                    daemon=True,
                )
                self._servers.append(server)
                self._threads.append(thread)
                thread.start()
        except OSError:
            self.stop()
            raise
        self.base_urls = [f"http://{s.server_name}:{s.server_port}" for s in self._servers]
        return self

    def stop(self) -> None:
        """Stop serving; wakes stalled handlers and cuts open connections so nothing hangs."""
        self._stopping.set()
        for server in self._servers:
            server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for server in self._servers:
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers, self._threads = [], []

    def __enter__(self) -> LoopbackWeb:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # addressing -----------------------------------------------------------------------------
    def url(self, host: int, path: str) -> str:
        return self.base_urls[host] + (path if path.startswith("/") else "/" + path)

    def image_body(self, width: int, height: int, seed: int, fmt: str) -> bytes:
        if self.cache_dir:
            return _disk_cached(self.cache_dir, width, height, seed, fmt)
        return _memory_cached(width, height, seed, fmt)

    # counters -------------------------------------------------------------------------------
    def reset_counters(self) -> None:
        with self._lock:
            self._counts: Counter[str] = Counter()
            self._times: defaultdict[str, list[float]] = defaultdict(list)
            self._inflight = [0] * self.hosts
            self._max_inflight = [0] * self.hosts
            self.total_requests = 0  # for images: every path but /robots.txt

    def requests_for(self, path: str) -> int:
        """Requests a path got, over all hosts (``path`` may be a full URL)."""
        with self._lock:
            return self._counts[urlsplit(path).path]

    def request_times(self, path: str) -> list[float]:
        """time.monotonic() arrival times of a path's requests, to check Retry-After gaps."""
        with self._lock:
            return list(self._times[urlsplit(path).path])

    def max_concurrent(self, host: int) -> int:
        with self._lock:
            return self._max_inflight[host]

    def _begin(self, host: int, path: str) -> int:
        now = time.monotonic()
        with self._lock:
            self._counts[path] += 1
            self._times[path].append(now)
            self.total_requests += path != "/robots.txt"
            self._inflight[host] += 1
            self._max_inflight[host] = max(self._max_inflight[host], self._inflight[host])
            return self._counts[path]

    def _end(self, host: int) -> None:
        with self._lock:
            self._inflight[host] -= 1

    def _track(self, connection: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)


# --------------------------------------------------------------------------- benchmark URLs

# (path template, weight, expected outcome). Long stalls are rare: each costs a deadline.
_FAULT_MIX: list[tuple[str, float, str]] = [
    ("/fault/404/{i}.jpg", 14, "http_error"),
    ("/fault/410/{i}.jpg", 5, "http_error"),  # "gone" only when a held copy disappears
    ("/fault/500/{i}.jpg", 6, "http_error"),
    ("/fault/flaky500/1/{i}.jpg", 6, "ok"),
    ("/fault/429/1/1/{i}.jpg", 5, "ok"),
    ("/fault/429/1/99/{i}.jpg", 2, "rate_limited"),
    ("/fault/429date/{i}.jpg", 2, "ok"),
    ("/fault/html/{i}.jpg", 10, "not_image"),
    ("/fault/text/{i}.jpg", 5, "not_image"),
    ("/fault/truncated/{i}.jpg", 5, "connection_error"),
    ("/fault/midclose/{i}.jpg", 4, "connection_error"),
    ("/fault/stall/{i}.jpg", 0.25, "timeout"),
    ("/fault/slowdrip/{i}.jpg", 0.25, "timeout"),
    ("/fault/oversize/{i}.jpg", 0.5, "too_large"),
    ("/fault/oversize-nolength/{i}.jpg", 0.25, "too_large"),
    ("/fault/bomb.png?{i}", 2, "too_large"),
    ("/fault/redirect/2/{i}.jpg", 6, "ok"),
    ("/fault/redirect-private/{i}.jpg", 2, "ok"),  # "blocked" unless private networks allowed
    ("/fault/gzip/{i}.jpg", 4, "ok"),
    ("/fault/noai/{i}.jpg", 4, "opted_out"),
    ("/fault/noimageai/{i}.jpg", 2, "opted_out"),  # we honour opt-outs aimed at any bot
    ("/fault/corrupt/{i}.jpg", 6, "corrupt"),
]


def _real_image_path(rng: random.Random, i: int) -> str:
    fmt = "jpg" if rng.random() < 0.7 else "png"
    longest = rng.randint(801, 2500) if rng.random() < 0.2 else rng.randint(200, 800)
    aspect = rng.choice([1.0, 4 / 3, 3 / 2, 16 / 9, 2.0])
    other = max(16, round(longest / aspect))
    width, height = (longest, other) if rng.random() < 0.6 else (other, longest)
    return f"/img/{width}x{height}/{i}.{fmt}"


def build_benchmark_urls(
    web: LoopbackWeb,
    n: int,
    *,
    seed: int = 0,
    fault_fraction: float = 0.1,
    private_allowed: bool = True,
) -> list[dict]:
    """``n`` entries {"image_name", "url", "expect"}, shuffled and spread over all hosts.

    Every fault kind appears at least once when there are enough faults. ``expect`` is the
    outcome the project should record; redirects to loopback are "ok" only because benchmarks
    must allow private networks (``private_allowed=False`` gives "blocked").
    """
    rng = random.Random(seed)
    n_faults = round(n * fault_fraction)
    kinds = list(_FAULT_MIX) if n_faults >= len(_FAULT_MIX) else []
    weights = [weight for _, weight, _ in _FAULT_MIX]
    kinds += rng.choices(_FAULT_MIX, weights=weights, k=n_faults - len(kinds))
    entries: list[tuple[str, str]] = []
    for i in range(n - n_faults):
        entries.append((_real_image_path(rng, seed * 10_000_000 + i), "ok"))
    for i, (template, _, expect) in enumerate(kinds):
        if "redirect-private" in template and not private_allowed:
            expect = "blocked"
        entries.append((template.format(i=f"{seed}-{i}"), expect))
    rng.shuffle(entries)
    out = []
    for i, (path, expect) in enumerate(entries):
        url = web.url(i % web.hosts, path)
        ext = ".png" if path.split("?")[0].endswith(".png") else ".jpg"
        name = hashlib.sha1(url.encode()).hexdigest()[:16] + ext
        out.append({"image_name": name, "url": url, "expect": expect})
    return out


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    """Serve until Ctrl-C or SIGTERM (the offline demo runs this in the background)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--hosts", type=int, default=1)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--stall-seconds", type=float, default=60.0)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--throttle-seconds", type=float, default=60.0, help="on SIGUSR1")
    args = parser.parse_args(argv)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    web = LoopbackWeb(
        args.hosts,
        args.latency_ms,
        port=args.port,
        stall_seconds=args.stall_seconds,
        cache_dir=args.cache_dir,
    )
    signal.signal(signal.SIGUSR1, lambda *_: web.throttle_first_host(args.throttle_seconds))
    with web:
        for base in web.base_urls:
            print(base, flush=True)
        try:
            while not done.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    print("loopback web stopped", file=sys.stderr)


if __name__ == "__main__":
    main()
