"""A loopback web shaped like the one behind a real mmc4 shard, for the download benchmark.

Why: ``LoopbackWeb`` (8 fast hosts, plain HTTP) hides what a downloader meets on the real web:
thousands of hosts, a few holding many images and most one to three; TLS on most of them;
latency with a long tail and a cost for every new connection; bodies that arrive at a few MB/s;
hosts that refuse connections or accept them and never answer; photo-sized images. This web
has all of it, every knob in ``RealWebConfig``, and knows the outcome every URL should get.

- Each host has its own address in 127.77.0.0/16 (Linux routes all of 127/8 to lo); URLs use
  the IP literal and one port shared by every host, so no DNS is involved.
- HTTPS hosts present an ECDSA certificate naming their IP (and a few dozen neighbours'), signed
  by a throw-away CA made at start-up (``RealWeb.ca_file``); clients must be told to trust it.
- Images come from a small pool of photo-like pictures generated once and reused by every URL.
- The server runs in child processes (asyncio, uvloop when installed) so it never shares the
  client's GIL; it stops by itself after ``max_runtime_s`` or when its parent goes away.
- ``RealWeb.set_mode(latency=False, faults=False)`` serves the very same URLs at once and without
  any fault (dead and silent hosts answer too): a downloader's CPU-bound baseline.

    with RealWeb(RealWebConfig(images=200, hosts=40)) as web:
        for entry in web.entries():
            print(entry["url"], entry["expect"])
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import math
import os
import random
import resource
import select
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, ImageDraw

from mmc4_assets.devtools.loopback_web import bomb_png, corrupt_jpeg, render_image

SUBNET = "127.77"  # hosts live in 127.77.0.0/16, away from the 127.0.0.x other tools use
_CTYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif"}
_READY_TIMEOUT_S = 120.0

# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class RealWebConfig:
    """Every knob of the web; the defaults are the shape of a real mmc4 shard's web."""

    images: int = 10_400
    hosts: int = 1_900
    # Images per host after the first: Zipf weights 1/rank**host_skew (a few CDNs, a long tail).
    host_skew: float = 1.0
    https_fraction: float = 2 / 3
    hosts_per_certificate: int = 32  # IP SANs per server certificate (see certificate_groups)
    # Per-request latency before the headers: log-normal, median and shape, capped.
    latency_median_ms: float = 250.0
    latency_sigma: float = 0.9
    latency_cap_ms: float = 6_000.0
    connect_ms: float = 150.0  # added to the first response of every connection (handshakes)
    bytes_per_second: float = 3_000_000.0  # body pacing per response
    dead_hosts: float = 0.03  # fraction of hosts where nothing listens (connection refused)
    silent_hosts: float = 0.02  # fraction that accept a connection and never answer
    fault_fraction: float = 0.08  # share of images on live hosts that get a per-image fault
    # The image pool: how many distinct pictures, their largest side, and the format mix.
    pool_size: int = 48
    max_side: int = 3000
    formats: tuple[tuple[str, float], ...] = (
        ("jpg", 0.8),
        ("png", 0.1),
        ("webp", 0.06),
        ("gif", 0.04),
    )
    stall_seconds: float = 60.0  # how long a stalled response or a silent host holds on
    latency: bool = True  # False: no latency, no connection cost, no pacing
    faults: bool = True  # False: no per-image fault, dead and silent hosts answer normally
    seed: int = 0
    max_runtime_s: float = 3_600.0  # the server stops by itself after this

    @classmethod
    def from_json(cls, text: str) -> RealWebConfig:
        raw = json.loads(text)
        raw["formats"] = tuple(tuple(pair) for pair in raw.get("formats", cls.formats))
        return cls(**raw)


# --------------------------------------------------------------------------- faults

# name -> (weight, outcome the project must record). Dominated, like the real web, by 404s and
# HTML pages served in place of an image; long stalls are rare (each costs a read timeout).
FAULTS: dict[str, tuple[float, str]] = {
    "404": (30, "http_error"),
    "403": (8, "http_error"),
    "410": (3, "http_error"),  # "gone" only when a copy we held disappears
    "500": (4, "http_error"),
    "flaky503": (4, "ok"),  # 503 once, then the image
    "429": (2, "ok"),  # 429 with Retry-After: 1 once, then the image
    "html": (12, "not_image"),  # a hotlink page served as image/jpeg
    "text": (3, "not_image"),
    "truncated": (4, "connection_error"),  # half the declared Content-Length, then hang up
    "midclose": (2, "connection_error"),  # chunked body cut without its last chunk
    "corrupt": (5, "corrupt"),  # JPEG headers, garbage entropy data
    "bomb": (1, "too_large"),  # a small PNG declaring 40,000 x 40,000 pixels
    "redirect": (10, "ok"),  # two 302 hops on the same host, then the image
    "noai": (3, "opted_out"),  # X-Robots-Tag: noai
    "stall": (0.5, "timeout"),  # headers, then nothing
    "oversize": (0.5, "too_large"),  # a 30 MB body, over the 25 MB cap
}
HOST_OUTCOMES = {"dead": "connection_error", "silent": "timeout"}
# Just over the downloader's 25 MB cap: a client without a cap reads it all, at the paced rate.
OVERSIZE_BYTES = 30 * 1024 * 1024


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Host:
    index: int
    ip: str
    scheme: str  # "http" or "https"
    kind: str  # "live", "dead" (nothing listens) or "silent" (accepts, never answers)


@dataclass(frozen=True)
class PlannedImage:
    index: int
    host: int
    path: str
    pool: int  # which pool picture it serves
    fault: str | None
    expect: str  # the outcome a correct downloader records (with faults on)


@dataclass
class Plan:
    """Hosts and images, a pure function of the configuration (server and client agree)."""

    hosts: list[Host]
    images: list[PlannedImage]
    pool_formats: list[str]
    by_path: dict[str, PlannedImage] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_path = {(image.host, image.path): image for image in self.images}

    def url(self, image: PlannedImage, port: int) -> str:
        host = self.hosts[image.host]
        return f"{host.scheme}://{host.ip}:{port}{image.path}"

    def summary(self) -> dict:
        kinds = Counter(h.kind for h in self.hosts)
        on_kind = Counter(self.hosts[i.host].kind for i in self.images)
        per_host = Counter(i.host for i in self.images)
        return {
            "images": len(self.images),
            "hosts": len(self.hosts),
            "https_hosts": sum(h.scheme == "https" for h in self.hosts),
            "dead_hosts": kinds["dead"],
            "silent_hosts": kinds["silent"],
            "images_on_dead_hosts": on_kind["dead"],
            "images_on_silent_hosts": on_kind["silent"],
            "largest_host_images": max(per_host.values(), default=0),
            "hosts_with_at_most_3": sum(n <= 3 for n in per_host.values()),
            "faults": dict(Counter(i.fault for i in self.images if i.fault)),
            "expected": dict(Counter(i.expect for i in self.images)),
        }


def host_ip(index: int) -> str:
    high, low = divmod(index, 254)
    if high > 255:
        raise ValueError("at most 65,024 hosts")
    return f"{SUBNET}.{high}.{low + 1}"


def _draw_hosts(rng: random.Random, count: int, candidates: list[int], taken: set[int]) -> set[int]:
    free = [i for i in candidates if i not in taken]
    return set(rng.sample(free, min(count, len(free))))


def make_plan(config: RealWebConfig) -> Plan:
    """Which host holds which image, which hosts are dead or silent, which images are faults."""
    if config.hosts < 1 or config.images < config.hosts:
        raise ValueError("need at least one host and at least one image per host")
    rng = random.Random(config.seed)
    # Host 0 is the biggest. Dead and silent hosts are drawn outside the top 1% (the CDNs):
    # one dead CDN would decide the whole benchmark.
    n = config.hosts
    small = list(range(max(1, n // 100), n)) or list(range(n))

    def share(fraction: float) -> int:
        return 0 if fraction <= 0 else max(1, round(fraction * n))

    dead = _draw_hosts(rng, share(config.dead_hosts), small, set())
    silent = _draw_hosts(rng, share(config.silent_hosts), small, dead)
    hosts = [
        Host(
            i,
            host_ip(i),
            "https" if rng.random() < config.https_fraction else "http",
            "dead" if i in dead else "silent" if i in silent else "live",
        )
        for i in range(n)
    ]
    owners = list(range(n))
    weights = [1.0 / (rank + 1) ** config.host_skew for rank in range(n)]
    owners += rng.choices(range(n), weights=weights, k=config.images - n)
    rng.shuffle(owners)

    live = [i for i, owner in enumerate(owners) if hosts[owner].kind == "live"]
    n_faults = round(len(live) * config.fault_fraction)
    names = list(FAULTS)
    faults = names[:] if n_faults >= len(names) else []
    faults += rng.choices(names, weights=[FAULTS[k][0] for k in names], k=n_faults - len(faults))
    fault_of = dict(zip(rng.sample(live, len(faults)), faults, strict=True))

    pool_formats = _pool_formats(config)
    images = []
    for i, owner in enumerate(owners):
        pool = rng.randrange(len(pool_formats))
        fault = fault_of.get(i)
        kind = hosts[owner].kind
        expect = HOST_OUTCOMES[kind] if kind != "live" else FAULTS[fault][1] if fault else "ok"
        path = f"/img/{i // 1000:02d}/{i:06d}.{pool_formats[pool]}"
        images.append(PlannedImage(i, owner, path, pool, fault, expect))
    return Plan(hosts, images, pool_formats)


# --------------------------------------------------------------------------- the image pool


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like picture: soft 1/f structure, a few hard edges, sensor grain.

    Why not flat gradients: decode, resize and encode costs, and byte sizes (~1-1.5 bits per
    pixel as JPEG q85), must look like the web's. Built small and scaled up, so even 3000 px
    takes a fraction of a second.
    """
    rng = np.random.default_rng(seed)
    scale = 192 / max(width, height)
    sw, sh = max(2, round(width * scale)), max(2, round(height * scale))
    luma = np.zeros((sh, sw), np.float32)
    amplitude, cells = 80.0, 3
    while cells <= 192:
        field_ = rng.normal(0, 1, (max(2, cells * sh // 192), max(2, cells * sw // 192)))
        grown = Image.fromarray(field_.astype(np.float32), mode="F").resize((sw, sh), 3)
        luma += np.asarray(grown) * amplitude
        amplitude, cells = amplitude * 0.6, cells * 2
    tint = rng.normal(0, 1, (2, 2, 3)).astype(np.float32)
    chroma = np.stack(
        [np.asarray(Image.fromarray(tint[..., c], mode="F").resize((sw, sh), 2)) for c in range(3)],
        -1,
    )
    base = rng.integers(70, 170, 3)
    small = np.clip(luma[..., None] + chroma * 35 + base, 0, 255).astype(np.uint8)
    picture = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(picture)
    for _ in range(int(rng.integers(2, 7))):
        x0, x1 = sorted(rng.integers(0, width, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height, 2).tolist())
        colour = tuple(int(c) for c in rng.integers(20, 235, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1 + 1, y1 + 1), fill=colour)
    grain = np.random.default_rng(seed % 7).integers(0, 16, (256, 256, 1), dtype=np.uint8)
    reps = (-(-height // 256), -(-width // 256), 3)
    pixels = np.asarray(picture, dtype=np.int16) + np.tile(grain, reps)[:height, :width] - 8
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _pool_formats(config: RealWebConfig) -> list[str]:
    rng = random.Random(config.seed * 7919 + config.pool_size)
    names = [name for name, _ in config.formats]
    weights = [weight for _, weight in config.formats]
    return rng.choices(names, weights=weights, k=config.pool_size)


def _pool_size(rng: random.Random, max_side: int, fmt: str) -> tuple[int, int]:
    """Web sizes: a third small, a third 500-1000 px, the rest larger, up to ``max_side``."""
    if fmt == "gif":  # animations and graphics: small
        longest = rng.randint(120, 600)
    else:
        bucket = rng.random()
        low, high = (150, 500) if bucket < 0.3 else (500, 1000) if bucket < 0.65 else (1000, 2000)
        if bucket >= 0.9:
            low, high = 2000, 3000
        longest = rng.randint(low, high)
    longest = max(16, min(longest, max_side))
    aspect = rng.choice([1.0, 4 / 3, 3 / 2, 16 / 9, 2.0])
    other = max(16, round(longest / aspect))
    return (longest, other) if rng.random() < 0.65 else (other, longest)


def render_pool_image(config: RealWebConfig, index: int) -> bytes:
    fmt = _pool_formats(config)[index]
    seed = config.seed * 100_003 + index
    width, height = _pool_size(random.Random(seed), config.max_side, fmt)
    out = io.BytesIO()
    if fmt == "png" and index % 2:  # half the PNGs are flat graphics, half are photos
        return render_image(width, height, seed, "png")
    picture = photo(width, height, seed)
    if fmt == "jpg":
        picture.save(out, "JPEG", quality=85)
    elif fmt == "webp":
        picture.save(out, "WEBP", quality=80, method=0)
    elif fmt == "gif":
        picture.quantize(128, method=Image.Quantize.FASTOCTREE).save(out, "GIF")
    else:
        picture.save(out, "PNG", compress_level=1)
    return out.getvalue()


def pool_key(config: RealWebConfig) -> str:
    """What the pool's bytes depend on (a cache key)."""
    relevant = (config.seed, config.pool_size, config.max_side, config.formats, 1)
    return hashlib.sha1(repr(relevant).encode()).hexdigest()[:12]


def write_pool(config: RealWebConfig, folder: Path, processes: int = 0) -> list[Path]:
    """Render the pool into ``folder`` (kept across runs when it is a cache folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    formats = _pool_formats(config)
    paths = [folder / f"{pool_key(config)}-{i}.{fmt}" for i, fmt in enumerate(formats)]
    todo = [i for i, path in enumerate(paths) if not path.exists()]
    if todo:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(len(todo), processes or os.cpu_count() or 1)) as pool:
            bodies = pool.map(render_pool_image, [config] * len(todo), todo)
            for i, body in zip(todo, bodies, strict=True):
                tmp = paths[i].with_name(f".{paths[i].name}.{os.getpid()}")
                tmp.write_bytes(body)
                os.replace(tmp, paths[i])
    return paths


# --------------------------------------------------------------------------- certificates


def certificate_groups(plan: Plan, per_certificate: int) -> dict[int, int]:
    """HTTPS host index -> its certificate's number: consecutive hosts share one certificate.

    Why share: loading a certificate into an SSLContext costs ~5 ms with OpenSSL 3, so 1,300
    of them would take the server seconds to start; a certificate naming a few dozen IPs is
    still of real size (~2 KB) and is checked against its own host like any other.
    """
    https = [host.index for host in plan.hosts if host.scheme == "https"]
    return {index: position // per_certificate for position, index in enumerate(https)}


def write_certificates(plan: Plan, folder: Path, per_certificate: int) -> Path:
    """A throw-away CA and ECDSA server certificates with IP SANs; returns the CA file."""
    import trustme

    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="mmc4_assets RealWeb throw-away CA")
    members: dict[int, list[str]] = {}
    for index, group in certificate_groups(plan, per_certificate).items():
        members.setdefault(group, []).append(plan.hosts[index].ip)
    for group, ips in members.items():
        pem = ca.issue_cert(*ips).private_key_and_cert_chain_pem
        pem.write_to_path(str(folder / f"server-{group}.pem"))
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return ca_file


# --------------------------------------------------------------------------- the server


def _raise_fd_limit() -> int:
    """Thousands of listeners plus hundreds of connections need more than the usual 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


class _Server:
    """Serves this process's share of the hosts; one asyncio loop."""

    def __init__(self, config: RealWebConfig, workdir: Path, part: int, parts: int):
        self.config = config
        self.plan = make_plan(config)
        self.workdir = workdir
        self.hosts = [h for h in self.plan.hosts if h.index % parts == part]
        formats = self.plan.pool_formats
        self.pool = [p.read_bytes() for p in write_pool(config, workdir / "pool")]
        self.ctypes = [_CTYPES[fmt] for fmt in formats]
        self.latency = config.latency
        self.faults = config.faults
        self.port = 0
        self.requests = 0
        self.counts: Counter[tuple[int, str]] = Counter()
        self.listeners: dict[int, asyncio.base_events.Server] = {}
        self.connections: set[asyncio.StreamWriter] = set()
        self.holding: set[asyncio.StreamWriter] = set()  # connections to silent hosts
        self.stopped = asyncio.Event()
        self.tls: dict[int, ssl.SSLContext] = {}
        contexts: dict[int, ssl.SSLContext] = {}
        groups = certificate_groups(self.plan, config.hosts_per_certificate)
        for host in self.hosts:
            group = groups.get(host.index)
            if group is not None and group not in contexts:
                contexts[group] = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                contexts[group].load_cert_chain(workdir / "certs" / f"server-{group}.pem")
            if group is not None:
                self.tls[host.index] = contexts[group]

    # listeners ---------------------------------------------------------------------------
    async def listen_all(self, port: int) -> int:
        """Bind every host on one port (0: pick one free on all of them)."""
        for _ in range(20):
            try:
                chosen = port
                for host in self.hosts:
                    await self._listen(host, chosen)
                    if chosen == 0:
                        chosen = self.listeners[host.index].sockets[0].getsockname()[1]
                self.port = chosen
                break
            except OSError:
                await self._close_listeners(list(self.listeners))
                if port:
                    raise
        else:
            raise OSError("no port free on every host address")
        await self._apply_mode()
        return self.port

    async def _listen(self, host: Host, port: int) -> None:
        async def handle(reader, writer, host=host):
            await self._connection(host, reader, writer)

        holding = host.kind == "silent" and self.faults
        self.listeners[host.index] = await asyncio.start_server(
            handle,
            host.ip,
            port,
            ssl=None if holding else self.tls.get(host.index),
            backlog=1024,
            reuse_address=True,
        )

    async def _close_listeners(self, indexes: list[int]) -> None:
        for index in indexes:
            server = self.listeners.pop(index, None)
            if server is not None:
                server.close()

    async def _apply_mode(self) -> None:
        """Dead hosts listen only without faults; silent ones hold or serve by mode."""
        for host in self.hosts:
            if host.kind == "live":
                continue
            await self._close_listeners([host.index])
            if host.kind == "silent" or not self.faults:
                await self._listen(host, self.port)

    async def set_mode(self, latency: bool, faults: bool) -> None:
        changed = faults != self.faults
        self.latency, self.faults = latency, faults
        if changed:
            for writer in list(self.holding):
                writer.transport.abort()
            await self._apply_mode()

    async def stop(self) -> None:
        await self._close_listeners(list(self.listeners))
        for writer in list(self.connections):
            writer.transport.abort()
        self.stopped.set()

    # connections -------------------------------------------------------------------------
    async def _connection(self, host: Host, reader, writer) -> None:
        self.connections.add(writer)
        try:
            if host.kind == "silent" and self.faults:
                self.holding.add(writer)
                await self._hold(reader)
                return
            first = True
            while not self.stopped.is_set():
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30.0)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                    return
                method, path, keep_alive = _parse_request(head)
                if method is None:
                    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    return
                self.requests += 1
                key = (host.index, path)
                self.counts[key] += 1
                if self.latency:
                    delay = self._latency_s(host, path, self.counts[key])
                    await asyncio.sleep(delay + self.config.connect_ms / 1000 * first)
                first = False
                keep = await self._respond(host, method, path, self.counts[key], writer)
                await writer.drain()
                if not (keep and keep_alive):
                    return
        except (OSError, RuntimeError):  # the client hung up (uvloop: RuntimeError on write)
            return
        finally:
            self.connections.discard(writer)
            self.holding.discard(writer)
            if self.stopped.is_set():
                writer.transport.abort()
            else:
                writer.close()

    async def _hold(self, reader) -> None:
        """Accept and say nothing: read what the client sends until it gives up (or we stop)."""
        deadline = asyncio.get_running_loop().time() + self.config.stall_seconds
        while not self.stopped.is_set():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            try:
                if not await asyncio.wait_for(reader.read(65536), left):
                    return
            except TimeoutError:
                return

    def _latency_s(self, host: Host, path: str, count: int) -> float:
        """Log-normal, drawn from (host, path, request number): every contender sees the same."""
        draw = random.Random(f"{self.config.seed}:{host.index}:{path}:{count}").gauss(0, 1)
        ms = self.config.latency_median_ms * math.exp(self.config.latency_sigma * draw)
        return min(ms, self.config.latency_cap_ms) / 1000

    # responses ---------------------------------------------------------------------------
    async def _respond(self, host: Host, method: str, path: str, count: int, writer) -> bool:
        """Send the ``count``-th response to this path; False when the connection must close."""
        hops = None
        if path.startswith("/r/"):  # a redirect hop: /r/{hops left}/{image path}
            _, _, left, rest = path.split("/", 3)
            hops, path = int(left) if left.isdigit() else 0, "/" + rest
        image = self.plan.by_path.get((host.index, path))
        if image is None:
            return await self._send(writer, method, 404, b"<html>not found</html>", "text/html")
        fault = image.fault if self.faults else None
        if hops is not None:
            fault = "redirect" if hops > 0 else None
        body, ctype = self.pool[image.pool], self.ctypes[image.pool]
        if fault is None or (fault in ("flaky503", "429") and count > 1):
            return await self._send(writer, method, 200, body, ctype)
        if fault == "429":
            extra = {"Retry-After": "1"}
            return await self._send(writer, method, 429, b"slow down\n", "text/plain", extra)
        if fault.isdigit():
            page = f"<html><body>{fault}</body></html>".encode()
            return await self._send(writer, method, int(fault), page, "text/html")
        if fault == "flaky503":
            return await self._send(writer, method, 503, b"<html>busy</html>", "text/html")
        if fault == "html":
            page = b"<!DOCTYPE html><html><head><title>Hotlink</title></head><body>no</body></html>"
            return await self._send(writer, method, 200, page * 20, "image/jpeg")
        if fault == "text":
            return await self._send(writer, method, 200, b"not an image\n" * 50, "text/plain")
        if fault == "corrupt":
            return await self._send(writer, method, 200, corrupt_jpeg(image.index % 50), ctype)
        if fault == "bomb":
            return await self._send(writer, method, 200, bomb_png(), "image/png")
        if fault == "noai":
            extra = {"X-Robots-Tag": "noai"}
            return await self._send(writer, method, 200, body, ctype, extra)
        if fault == "redirect":
            left = 1 if hops is None else hops - 1
            target = f"{host.scheme}://{host.ip}:{self.port}/r/{left}{path}"
            return await self._send(writer, method, 302, b"", "text/html", {"Location": target})
        if fault == "truncated":
            writer.write(_head(200, ctype, len(body)) + body[: len(body) // 2])
            return False
        if fault == "midclose":
            writer.write(_head(200, ctype, None, {"Transfer-Encoding": "chunked"}))
            part = body[: len(body) // 3]
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            return False
        if fault == "stall":
            writer.write(_head(200, ctype, len(body)))
            await writer.drain()
            try:
                await asyncio.wait_for(self.stopped.wait(), self.config.stall_seconds)
            except TimeoutError:
                pass
            return False
        if fault == "oversize":
            writer.write(_head(200, ctype, OVERSIZE_BYTES))
            await self._paced(writer, bytes(OVERSIZE_BYTES // 1024), repeat=1024)
            return False
        raise AssertionError(f"unknown fault {fault}")

    async def _send(self, writer, method, status, body, ctype, extra=None) -> bool:
        writer.write(_head(status, ctype, len(body), extra))
        if method != "HEAD":
            await self._paced(writer, body)
        return True

    async def _paced(self, writer, body: bytes, repeat: int = 1) -> None:
        """Write ``body`` (``repeat`` times) at bytes_per_second, or at once without latency."""
        rate = self.config.bytes_per_second
        if not self.latency or rate <= 0:
            for _ in range(repeat):
                writer.write(body)
                await writer.drain()
            return
        loop = asyncio.get_running_loop()
        start, sent = loop.time(), 0
        step = max(16_384, int(rate / 50))
        view = memoryview(body)
        for _ in range(repeat):
            for offset in range(0, len(view), step):
                if writer.is_closing():  # the client gave up (a byte cap, a timeout)
                    return
                chunk = view[offset : offset + step]
                writer.write(chunk)
                sent += len(chunk)
                await writer.drain()
                wait = start + sent / rate - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)


def _head(status: int, ctype: str, length: int | None, extra: dict | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}", f"Content-Type: {ctype}", "Server: RealWeb"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_request(head: bytes) -> tuple[str | None, str, bool]:
    """(method, path, keep-alive) of a request head; method None when unparsable."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None, "", False
    method, target, version = parts
    connection = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "connection":
            connection = value.strip().lower()
    keep_alive = version == "HTTP/1.1" and connection != "close"
    return method, urlsplit(target).path, keep_alive


async def _serve(config: RealWebConfig, workdir: Path, port: int, part: int, parts: int) -> None:
    """A server child: bind, say ready on stdout, obey stdin commands, stop when told or due."""
    started = time.monotonic()
    fd_limit = _raise_fd_limit()
    server = _Server(config, workdir, part, parts)
    chosen = await server.listen_all(port)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_network_errors)
    loop.call_later(config.max_runtime_s, lambda: asyncio.ensure_future(server.stop()))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(server.stop()))

    def reply(message: dict) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    async def command(line: str) -> None:
        words = line.split()
        if not words:
            return
        if words[0] == "set":
            options = dict(word.split("=", 1) for word in words[1:])
            latency = options.get("latency", str(int(server.latency))) == "1"
            faults = options.get("faults", str(int(server.faults))) == "1"
            await server.set_mode(latency, faults)
            reply({"ok": True, "latency": server.latency, "faults": server.faults})
        elif words[0] == "reset":
            server.counts.clear()
            server.requests = 0
            reply({"ok": True})
        elif words[0] == "stats":
            reply({"ok": True, "requests": server.requests, "connections": len(server.connections)})
        elif words[0] == "stop":
            await server.stop()
        else:
            reply({"ok": False, "error": f"unknown command {words[0]!r}"})

    def read_commands() -> None:  # a thread: stdin EOF (the parent went away) stops us
        for line in sys.stdin:
            asyncio.run_coroutine_threadsafe(command(line), loop).result()
        asyncio.run_coroutine_threadsafe(server.stop(), loop)

    threading.Thread(target=read_commands, daemon=True).start()
    reply(
        {
            "ready": True,
            "port": chosen,
            "hosts": len(server.hosts),
            "fd_limit": fd_limit,
            "startup_s": round(time.monotonic() - started, 2),
        }
    )
    await server.stopped.wait()


def _quiet_network_errors(loop, context: dict) -> None:
    """Clients hanging up or refusing our certificate are part of the game, not news."""
    if isinstance(context.get("exception"), (OSError, TimeoutError)):  # SSLError is an OSError
        return
    loop.default_exception_handler(context)


def _run(coroutine) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


# --------------------------------------------------------------------------- the handle


class RealWeb:
    """Start the web's server processes, hand out its URLs and expectations, switch its mode."""

    def __init__(
        self,
        config: RealWebConfig | None = None,
        *,
        processes: int = 1,
        pool_cache: str | os.PathLike | None = None,
    ):
        self.config = config or RealWebConfig()
        self.processes = max(1, processes)
        self.pool_cache = Path(pool_cache) if pool_cache else None
        self.plan = make_plan(self.config)
        self.port = 0
        self.workdir: Path | None = None
        self._procs: list[subprocess.Popen] = []
        self.startup: list[dict] = []

    @property
    def ca_file(self) -> Path:
        assert self.workdir is not None, "start the web first"
        return self.workdir / "certs" / "ca.pem"

    def start(self) -> RealWeb:
        if self._procs:
            return self
        self.workdir = Path(tempfile.mkdtemp(prefix="mmc4-realweb-"))
        try:
            write_certificates(self.plan, self.workdir / "certs", self.config.hosts_per_certificate)
            pool = self.workdir / "pool"
            if self.pool_cache:
                write_pool(self.config, self.pool_cache)
                pool.symlink_to(self.pool_cache.resolve(), target_is_directory=True)
            else:
                write_pool(self.config, pool)
            for part in range(self.processes):
                self._spawn(part)
                self.startup.append(self._read(self._procs[part], _READY_TIMEOUT_S))
                self.port = self.port or self.startup[0]["port"]
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, part: int) -> None:
        cmd = [
            sys.executable,
            "-m",
            "mmc4_assets.devtools.real_web",
            "--serve",
            json.dumps(asdict(self.config)),
            str(self.workdir),
            str(self.port),
            f"{part}/{self.processes}",
        ]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._procs.append(proc)

    @staticmethod
    def _read(proc: subprocess.Popen, timeout: float) -> dict:
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"real web server {proc.pid} did not answer (exit {proc.poll()})")
        message = json.loads(line)
        if not message.get("ok", True):
            raise RuntimeError(f"real web server: {message.get('error')}")
        return message

    def _command(self, line: str) -> list[dict]:
        for proc in self._procs:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
        return [self._read(proc, 30.0) for proc in self._procs]

    def set_mode(self, *, latency: bool, faults: bool) -> None:
        """Switch every server process; the URLs stay the same."""
        self._command(f"set latency={int(latency)} faults={int(faults)}")

    def reset(self) -> None:
        """Forget request counts (flaky hosts fail again, latency draws repeat): one per run."""
        self._command("reset")

    def stats(self) -> dict:
        replies = self._command("stats")
        return {
            "requests": sum(r["requests"] for r in replies),
            "cpu_s": sum(_cpu_seconds(p.pid) for p in self._procs),
        }

    def stop(self) -> None:
        for proc in self._procs:
            try:
                proc.stdin.close()  # EOF: the server stops itself
            except OSError:
                pass
        for proc in self._procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        self._procs = []
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RealWeb:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, image: PlannedImage) -> str:
        return self.plan.url(image, self.port)

    def entries(self) -> list[dict]:
        """One dict per image: image_name, url, expect (with faults on), host_kind, fault."""
        out = []
        for image in self.plan.images:
            host = self.plan.hosts[image.host]
            name = hashlib.sha1(f"{host.ip}{image.path}".encode()).hexdigest()[:16]
            out.append(
                {
                    "image_name": name + "." + image.path.rsplit(".", 1)[1],
                    "url": self.url(image),
                    "expect": image.expect,
                    "host_kind": host.kind,
                    "fault": image.fault,
                }
            )
        return out


def _cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    """Serve a real-shaped web until Ctrl-C; write its URLs and expected outcomes to a TSV."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:  # a server child started by RealWeb
        config, workdir, port, share = argv[1:5]
        part, parts = (int(x) for x in share.split("/"))
        _run(_serve(RealWebConfig.from_json(config), Path(workdir), int(port), part, parts))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    numbers = {"int": int, "float": float}
    for f in fields(RealWebConfig):
        if f.type in numbers:
            flag = "--" + f.name.replace("_", "-")
            parser.add_argument(flag, type=numbers[f.type], default=f.default)
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--urls", default="realweb-urls.tsv", help="where to write url<TAB>expect")
    args = parser.parse_args(argv)
    options = {
        f.name: getattr(args, f.name) for f in fields(RealWebConfig) if hasattr(args, f.name)
    }
    config = RealWebConfig(**options, latency=not args.no_latency, faults=not args.no_faults)
    with RealWeb(config, processes=args.processes) as web:
        with open(args.urls, "w") as out:
            for entry in web.entries():
                expect = entry["expect"] if config.faults else "ok"
                out.write(f"{entry['url']}\t{expect}\n")
        print(json.dumps(web.plan.summary()), flush=True)
        print(f"urls: {args.urls}\nCA: {web.ca_file}\nCtrl-C to stop", flush=True)
        try:
            while all(p.poll() is None for p in web._procs):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
