"""A loopback web shaped like the one behind a real mmc4 shard, for the download benchmark.

Why: ``LoopbackWeb`` (8 fast hosts, plain HTTP) hides what a downloader meets on the real web:
thousands of hosts at two or three images each, a few CDNs holding many; names to resolve, some
slowly, some never; TLS on most hosts, each with its own small certificate; latency with a long
tail and a cost for every new connection; bodies that arrive at a few MB/s; hosts that refuse
connections or accept them and never answer; robots.txt files; photo-sized images. This web has
all of it, every knob in ``RealWebConfig``, and knows the outcome every URL should get.

- Each host has its own address in 127.77.0.0/16 (Linux routes all of 127/8 to lo) and one
  port shared by every host. With ``names`` (the default) URLs hold a DNS name that the web's
  own DNS server (``dns_server``) resolves, with a resolver's latency and failures; clients
  must resolve through it (``netns``: a namespace whose resolv.conf names it). Without, URLs
  hold the IP literal and no name is ever resolved.
- Names group into sites as on the real web (``real_web_sites``): CDNs behind several names of
  one site, private-suffix names that are each their own site, a long tail of one-host sites.
- HTTPS hosts present a small ECDSA certificate chosen by SNI, naming the host (a wildcard for
  a multi-name CDN); in IP mode, certificates with a few dozen IP SANs. All are signed by a
  throw-away CA made at start-up (``RealWeb.ca_file``); clients must be told to trust it.
- Images come from a small pool of photo-like pictures generated once and reused by every URL.
- The server runs in child processes (asyncio, uvloop when installed) so it never shares the
  client's GIL; it stops by itself after ``max_runtime_s`` or when its parent goes away. It
  counts, per site and per host, the requests in flight (``RealWeb.stats``).
- ``RealWeb.set_mode(latency=False, faults=False)`` serves the very same URLs at once and without
  any fault (dead and silent hosts answer, every name resolves, every robots.txt is a 404): a
  downloader's CPU-bound baseline.

    with RealWeb(RealWebConfig(images=200, hosts=40, names=False)) as web:
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
import shutil
import signal
import ssl
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, ImageDraw

from mmc4_devtools.commanded import CommandedProcess, reply, serve_commands
from mmc4_devtools.dns_server import DnsProcess, NameRecord
from mmc4_devtools.loopback_web import bomb_png, corrupt_jpeg, render_image
from mmc4_devtools.real_web.sites import (
    CDN_NAMES,
    ROBOTS_FILES,
    ROBOTS_HTML,
    certificate_name,
    host_names,
    site_of,
)

SUBNET = "127.77"  # hosts live in 127.77.0.0/16, away from the 127.0.0.x other tools use
_CTYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif"}
_READY_TIMEOUT_S = 120.0

# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class RealWebConfig:
    """Every knob of the web; the defaults are the shape of a real mmc4 shard's web."""

    images: int = 10_438
    # Hosts: 0 means images / images_per_host. The real web behind a shard has 2-3 images per
    # host (shard 151: 417 images on 128 hosts), so most requests are the first to their host.
    hosts: int = 0
    images_per_host: float = 2.088
    # Images per host after the first: Zipf weights 1/rank**host_skew (a few CDNs, a long tail).
    host_skew: float = 1.0
    https_fraction: float = 2 / 3
    hosts_per_certificate: int = 32  # IP mode: IP SANs per server certificate
    # Per-request latency before the headers: log-normal, median and shape, capped.
    latency_median_ms: float = 250.0
    latency_sigma: float = 0.9
    latency_cap_ms: float = 6_000.0
    connect_ms: float = 150.0  # added to the first response of every connection (handshakes)
    bytes_per_second: float = 3_000_000.0  # body pacing per response
    dead_hosts: float = 0.03  # fraction of hosts where nothing listens (connection refused)
    silent_hosts: float = 0.02  # fraction that accept a connection and never answer
    fault_fraction: float = 0.08  # share of images on live hosts that get a per-image fault
    # Names: URLs hold DNS names served by the web's own DNS server (False: IP literals).
    names: bool = True
    dns_address: str = "127.53.0.1"
    dns_port: int = 53  # 0: any free port (tests outside a namespace)
    # A name's first lookup: log-normal (a recursive resolver's cold cache), then at once.
    dns_median_ms: float = 120.0
    dns_sigma: float = 1.0
    dns_cap_ms: float = 4_000.0  # under glibc's 5 s timeout
    nxdomain_names: float = 0.05  # names that no longer exist
    servfail_names: float = 0.01  # SERVFAIL after servfail_ms, every time
    servfail_ms: float = 1_500.0
    silent_names: float = 0.01  # never answered
    # robots.txt: shares of hosts serving a file, an HTML page, a 5xx (the rest: 404), and the
    # share of all images that the files close to the token mmc4-assets.
    robots_files: float = 0.30
    robots_html: float = 0.02
    robots_5xx: float = 0.01
    robots_disallowed: float = 0.03
    # Throttling (off by default): the N sites with the most images answer 429 with
    # Retry-After: throttle_retry_after_s to every request for that long, after every
    # throttle_burst requests served.
    throttle_sites: int = 0
    throttle_burst: int = 20
    throttle_retry_after_s: int = 2
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
    latency: bool = True  # False: no latency, no connection cost, no pacing, no DNS latency
    faults: bool = True  # False: no fault of any kind (hosts, names, robots.txt, images)
    seed: int = 0
    max_runtime_s: float = 3_600.0  # the server stops by itself after this

    @property
    def host_count(self) -> int:
        return self.hosts or max(1, round(self.images / self.images_per_host))

    @classmethod
    def from_json(cls, text: str) -> RealWebConfig:
        raw = json.loads(text)
        raw["formats"] = tuple(tuple(pair) for pair in raw.get("formats", cls.formats))
        return cls(**raw)


# The web the benchmark measured before names (issue 18's "your own benchmark"), for comparisons.
OLD_SHAPE = {
    "images": 10_400,
    "hosts": 1_900,
    "names": False,
    "robots_files": 0.0,
    "robots_html": 0.0,
    "robots_5xx": 0.0,
    "robots_disallowed": 0.0,
}


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
# A name that does not resolve (NXDOMAIN, SERVFAIL, no answer): nothing can be fetched.
DNS_OUTCOME = "connection_error"
# robots.txt answering 5xx: RFC 9309 says assume complete disallow, and try again later.
ROBOTS_5XX_OUTCOME = "http_error"
ROBOTS_5XX_STATUS = 503
# An image the host's robots.txt closes to the token mmc4-assets: never requested.
DISALLOWED_OUTCOME = "robots_disallowed"
# Just over the downloader's 25 MB cap: a client without a cap reads it all, at the paced rate.
OVERSIZE_BYTES = 30 * 1024 * 1024


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Host:
    index: int
    ip: str
    name: str  # its DNS name (used in URLs in names mode)
    site: str  # the registrable domain of its name (per the Public Suffix List)
    scheme: str  # "http" or "https"
    kind: str  # "live", "dead" (nothing listens) or "silent" (accepts, never answers)
    dns: str = "ok"  # "ok", "nxdomain", "servfail" or "silent" (names mode only)
    dns_ms: float = 0.0  # latency of the name's first lookup
    robots: str = "none"  # /robots.txt: "none" (404), "file", "html" or "5xx"
    robots_file: int = -1  # index into ROBOTS_FILES when robots == "file"


@dataclass(frozen=True)
class PlannedImage:
    index: int
    host: int
    path: str
    pool: int  # which pool picture it serves
    fault: str | None
    expect: str  # the outcome a correct downloader records (with faults on)
    disallowed: bool = False  # robots.txt closes it to mmc4-assets


@dataclass
class Plan:
    """Hosts and images, a pure function of the configuration (server and client agree)."""

    hosts: list[Host]
    images: list[PlannedImage]
    pool_formats: list[str]
    names: bool = True
    throttled_sites: frozenset[str] = frozenset()
    by_path: dict[tuple[int, str], PlannedImage] = field(init=False, repr=False)
    sites: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_path = {(image.host, image.path): image for image in self.images}
        self.sites = list(dict.fromkeys(self.site(host) for host in self.hosts))

    def authority(self, host: Host) -> str:
        """What URLs name the host by: its DNS name, or its IP literal."""
        return host.name if self.names else host.ip

    def site(self, host: Host) -> str:
        """The host's site: its registrable domain, or its IP literal (its own site)."""
        return host.site if self.names else host.ip

    def url(self, image: PlannedImage, port: int) -> str:
        host = self.hosts[image.host]
        return f"{host.scheme}://{self.authority(host)}:{port}{image.path}"

    def robots_text(self, host: Host) -> str | None:
        return ROBOTS_FILES[host.robots_file].text if host.robots == "file" else None

    def zone(self) -> dict[str, NameRecord]:
        return {h.name: NameRecord(h.ip, h.dns, h.dns_ms) for h in self.hosts}

    def summary(self) -> dict:
        kinds = Counter(h.kind for h in self.hosts)
        on_kind = Counter(self.hosts[i.host].kind for i in self.images)
        per_host = Counter(i.host for i in self.images)
        per_site = Counter(self.site(self.hosts[i.host]) for i in self.images)
        out = {
            "images": len(self.images),
            "hosts": len(self.hosts),
            "images_per_host": round(len(self.images) / len(self.hosts), 2),
            "sites": len(self.sites),
            "names": self.names,
            "https_hosts": sum(h.scheme == "https" for h in self.hosts),
            "dead_hosts": kinds["dead"],
            "silent_hosts": kinds["silent"],
            "images_on_dead_hosts": on_kind["dead"],
            "images_on_silent_hosts": on_kind["silent"],
            "largest_host_images": max(per_host.values(), default=0),
            "largest_sites": dict(per_site.most_common(5)),
            "hosts_with_at_most_3": sum(n <= 3 for n in per_host.values()),
            "robots": dict(Counter(h.robots for h in self.hosts)),
            "faults": dict(Counter(i.fault for i in self.images if i.fault)),
            "expected": dict(Counter(i.expect for i in self.images)),
        }
        if self.names:
            out["dns"] = dict(Counter(h.dns for h in self.hosts))
        return out


def host_ip(index: int) -> str:
    high, low = divmod(index, 254)
    if high > 255:
        raise ValueError("at most 65,024 hosts")
    return f"{SUBNET}.{high}.{low + 1}"


def _draw(
    rng: random.Random, fraction: float, hosts: int, candidates: list[int], taken: set[int]
) -> set[int]:
    """About ``fraction`` of all hosts (at least one when asked for any), from ``candidates``."""
    count = 0 if fraction <= 0 else max(1, round(fraction * hosts))
    free = [i for i in candidates if i not in taken]
    return set(rng.sample(free, min(count, len(free))))


def make_plan(config: RealWebConfig) -> Plan:
    """Which host holds which image; which hosts are dead or silent, which names fail, which
    robots.txt each host serves; which images are faults or closed to us by robots.txt.

    Names are drawn in both modes (the plan is the same but for how URLs name the hosts), so a
    run by IP and a run by names meet the same images, faults and latencies.
    """
    n = config.host_count
    if n < 1 or config.images < n:
        raise ValueError("need at least one host and at least one image per host")
    rng = random.Random(config.seed)
    names = host_names(random.Random(f"{config.seed}:names"), n)
    cdn = sum(name in CDN_NAMES for name in names)
    # Host 0 is the biggest. Dead, silent, unresolvable hosts and broken robots.txt are drawn
    # outside the head (the CDNs): one dead CDN would decide the whole benchmark.
    head = max(n // 100, cdn if n >= 24 else 0, 1 if n > 1 else 0)
    tail = list(range(head, n)) or list(range(n))
    dead = _draw(rng, config.dead_hosts, n, tail, set())
    silent = _draw(rng, config.silent_hosts, n, tail, dead)
    live_tail = [i for i in tail if i not in dead | silent]
    nxdomain = _draw(rng, config.nxdomain_names, n, live_tail, set())
    servfail = _draw(rng, config.servfail_names, n, live_tail, nxdomain)
    mute = _draw(rng, config.silent_names, n, live_tail, nxdomain | servfail)
    robots_5xx = _draw(rng, config.robots_5xx, n, live_tail, set())
    robots_html = _draw(rng, config.robots_html, n, live_tail, robots_5xx)
    robots_file = _draw(rng, config.robots_files, n, live_tail, robots_5xx | robots_html)
    whole = config.robots_disallowed > 0  # files closing a whole host only when any are asked
    files = [i for i, f in enumerate(ROBOTS_FILES) if whole or f.disallowed != "/"]
    file_weights = [ROBOTS_FILES[i].weight for i in files]
    dns_rng = random.Random(f"{config.seed}:dns")
    hosts = []
    for i in range(n):
        first_ms = config.dns_median_ms * math.exp(config.dns_sigma * dns_rng.gauss(0, 1))
        scheme = "https" if rng.random() < config.https_fraction else "http"
        hosts.append(
            Host(
                i,
                host_ip(i),
                names[i],
                site_of(names[i]),
                "https" if names[i] in CDN_NAMES else scheme,
                "dead" if i in dead else "silent" if i in silent else "live",
                "nxdomain"
                if i in nxdomain
                else "servfail"
                if i in servfail
                else "silent"
                if i in mute
                else "ok",
                round(min(first_ms, config.dns_cap_ms), 1),
                "5xx"
                if i in robots_5xx
                else "html"
                if i in robots_html
                else "file"
                if i in robots_file
                else "none",
                rng.choices(files, file_weights)[0] if i in robots_file else -1,
            )
        )
    owners = list(range(n))
    weights = [1.0 / (rank + 1) ** config.host_skew for rank in range(n)]
    owners += rng.choices(range(n), weights=weights, k=config.images - n)
    rng.shuffle(owners)

    # robots.txt: whole hosts closed ("/"), then images put under closed folders up to the
    # share; some more under folders only other groups close (traps for a wrong parser).
    robots_of = [ROBOTS_FILES[h.robots_file] if h.robots == "file" else None for h in hosts]
    placed: dict[int, str] = {}
    closed = {i for i, o in enumerate(owners) if robots_of[o] and robots_of[o].disallowed == "/"}
    room = [
        i
        for i, o in enumerate(owners)
        if robots_of[o] and robots_of[o].disallowed not in (None, "/")
    ]
    target = max(0, round(config.robots_disallowed * config.images) - len(closed))
    for i in rng.sample(room, min(target, len(room))) if config.robots_disallowed else []:
        placed[i] = robots_of[owners[i]].disallowed
        closed.add(i)
    for i, owner in enumerate(owners):
        robots = robots_of[owner]
        if robots and robots.allowed and i not in closed and rng.random() < 0.5:
            placed[i] = robots.allowed

    servable = [
        i
        for i, owner in enumerate(owners)
        if hosts[owner].kind == "live" and hosts[owner].robots != "5xx" and i not in closed
    ]
    n_faults = round(len(servable) * config.fault_fraction)
    fault_names = list(FAULTS)
    faults = fault_names[:] if n_faults >= len(fault_names) else []
    faults += rng.choices(
        fault_names, weights=[FAULTS[k][0] for k in fault_names], k=n_faults - len(faults)
    )
    fault_of = dict(zip(rng.sample(servable, len(faults)), faults, strict=True))

    pool_formats = _pool_formats(config)
    images = []
    for i, owner in enumerate(owners):
        pool = rng.randrange(len(pool_formats))
        fault = fault_of.get(i)
        host = hosts[owner]
        if host.kind != "live":
            expect = HOST_OUTCOMES[host.kind]
        elif config.names and host.dns != "ok":
            expect = DNS_OUTCOME
        elif host.robots == "5xx":
            expect = ROBOTS_5XX_OUTCOME
        elif i in closed:
            expect = DISALLOWED_OUTCOME
        else:
            expect = FAULTS[fault][1] if fault else "ok"
        folder = placed.get(i, f"/img/{i // 1000:02d}/")
        path = f"{folder}{i:06d}.{pool_formats[pool]}"
        images.append(PlannedImage(i, owner, path, pool, fault, expect, i in closed))
    plan = Plan(hosts, images, pool_formats, config.names)
    if config.throttle_sites:
        per_site = Counter(plan.site(hosts[image.host]) for image in images)
        plan.throttled_sites = frozenset(s for s, _ in per_site.most_common(config.throttle_sites))
    return plan


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
    """IP mode: HTTPS host index -> its certificate's number; consecutive hosts share one.

    Why share: a certificate with IP SANs cannot be chosen by SNI (clients send none for an
    IP literal), so each listener carries its own SSLContext; sharing keeps them few.
    """
    https = [host.index for host in plan.hosts if host.scheme == "https"]
    return {index: position // per_certificate for position, index in enumerate(https)}


def certificate_file(folder: Path, name: str) -> Path:
    """Names mode: the file of the certificate for ``name`` (a wildcard's for CDN names)."""
    digest = hashlib.sha1(certificate_name(name).encode()).hexdigest()[:16]
    return folder / f"name-{digest}.pem"


DEFAULT_SNI_NAME = "realweb.invalid"  # the certificate served to a client naming no known host


def write_certificates(plan: Plan, folder: Path, per_certificate: int) -> Path:
    """A throw-away CA and small ECDSA server certificates; returns the CA file.

    Names mode: one certificate per HTTPS host name (one wildcard per multi-name CDN), as real
    servers have, chosen by SNI. IP mode: IP SANs, ``per_certificate`` hosts each. Issuing
    one takes ~0.2 ms, so nothing is cached between runs.
    """
    import trustme

    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="mmc4_assets RealWeb throw-away CA")
    if plan.names:
        wanted = {certificate_name(h.name) for h in plan.hosts if h.scheme == "https"}
        for name in sorted(wanted | {DEFAULT_SNI_NAME}):
            pem = ca.issue_cert(name).private_key_and_cert_chain_pem
            pem.write_to_path(str(certificate_file(folder, name)))
    else:
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


class _Throttle:
    """One throttled site: after every ``burst`` requests served, 429 to everything for a while.

    Each 429 announces a pause (Retry-After from when it is sent); requests received inside any
    announced pause are counted: a polite client sends none.
    """

    def __init__(self, burst: int, retry_after_s: int):
        self.burst, self.retry_after_s = burst, retry_after_s
        self.served = 0
        self.window_end = 0.0  # 429 to every request until then
        self.pause_end = 0.0  # the end of the latest pause announced
        self.counts: Counter[str] = Counter()

    def received(self, now: float) -> bool:
        """Count a request; True when it must get a 429."""
        if now < self.pause_end:
            self.counts["in_pause"] += 1
        if now < self.window_end:
            return True
        if self.served >= self.burst:
            self.served = 0
            self.window_end = now + self.retry_after_s
            self.counts["windows"] += 1
            return True
        self.served += 1
        return False

    def retry_after(self, now: float) -> int:
        """The Retry-After of a 429 sent now (the pause it announces starts now)."""
        seconds = max(1, math.ceil(self.window_end - now))
        self.pause_end = max(self.pause_end, now + seconds)
        self.counts["429"] += 1
        return seconds


class _Server:
    """Serves this process's share of the hosts (whole sites); one asyncio loop."""

    def __init__(self, config: RealWebConfig, workdir: Path, part: int, parts: int):
        self.config = config
        self.plan = make_plan(config)
        self.workdir = workdir
        site_number = {site: k for k, site in enumerate(self.plan.sites)}
        self.hosts = [h for h in self.plan.hosts if site_number[self.plan.site(h)] % parts == part]
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
        self.tls = self._tls_contexts(workdir / "certs")
        self._new_counters()

    def _new_counters(self) -> None:
        # Requests in flight (request head received .. response sent), now and at most, by key.
        self.in_flight: Counter[str] = Counter()
        # writer -> the request it answers: (in-flight keys, its connection's reader (to see
        # the client leave), path, when its head came)
        self.answering: dict = {}
        self.max_site: Counter[str] = Counter()
        self.max_host: Counter[str] = Counter()
        self.peak_site_requests: dict[str, list] = {}  # site -> its requests when at its most
        self.robots_requests: Counter[str] = Counter()
        self.disallowed_requests: Counter[str] = Counter()
        self.throttles = {
            site: _Throttle(self.config.throttle_burst, self.config.throttle_retry_after_s)
            for site in self.plan.throttled_sites
        }

    def _tls_contexts(self, certs: Path) -> dict[int, ssl.SSLContext]:
        """HTTPS host index -> the SSLContext its listener starts handshakes with.

        Names mode: one context for every listener, whose SNI callback switches to the
        certificate naming the host the client asked for (as a real server with many virtual
        hosts does). IP mode: clients send no SNI; each listener has its group's certificate.
        """
        https = [h for h in self.hosts if h.scheme == "https"]
        if not self.plan.names:
            groups = certificate_groups(self.plan, self.config.hosts_per_certificate)
            contexts: dict[int, ssl.SSLContext] = {}
            for host in https:
                group = groups[host.index]
                if group not in contexts:
                    contexts[group] = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                    contexts[group].load_cert_chain(certs / f"server-{group}.pem")
            return {host.index: contexts[groups[host.index]] for host in https}
        by_file: dict[Path, ssl.SSLContext] = {}
        for name in [DEFAULT_SNI_NAME, *(h.name for h in https)]:
            path = certificate_file(certs, name)
            if path not in by_file:
                by_file[path] = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                by_file[path].load_cert_chain(path)
        self.sni = {h.name: by_file[certificate_file(certs, h.name)] for h in https}
        default = by_file[certificate_file(certs, DEFAULT_SNI_NAME)]
        default.sni_callback = self._choose_certificate
        return {host.index: default for host in https}

    def _choose_certificate(self, ssl_object, server_name: str | None, context) -> None:
        chosen = self.sni.get((server_name or "").lower())
        if chosen is not None:
            ssl_object.context = chosen

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
        self.sweeper = asyncio.ensure_future(self._sweep_left())
        return self.port

    async def _sweep_left(self) -> None:
        """Every few ms, stop counting requests whose client has closed its side (it read what
        it wanted, or gave up): the per-site counts are the client's, not a response the server
        is still writing to nobody."""
        while not self.stopped.is_set():
            await asyncio.sleep(0.003)
            for writer in [w for w in self.answering if self._client_left(w)]:
                self._answered(writer)

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

    def reset(self) -> None:
        self.counts.clear()
        self.requests = 0
        self._new_counters()

    def stats(self) -> dict:
        return {
            "requests": self.requests,
            "connections": len(self.connections),
            "max_in_flight_site": dict(self.max_site),
            "max_in_flight_host": dict(self.max_host),
            "peak_site_requests": {
                site: self.peak_site_requests.get(site)
                for site, _ in Counter(self.max_site).most_common(5)
            },
            "robots_requests": dict(self.robots_requests),
            "disallowed_requests": dict(self.disallowed_requests),
            "throttle": {site: dict(t.counts) for site, t in self.throttles.items()},
        }

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
                keys = ("s:" + self.plan.site(host), "h:" + self.plan.authority(host))
                # A request stops counting once its last byte is handed to the socket (_paced),
                # before the flow-control wait: the client may already be sending its next one.
                self.answering[writer] = (keys, reader, path, time.monotonic())
                self._enter(keys)
                try:
                    throttle = self.throttles.get(self.plan.site(host)) if self.faults else None
                    limited = (
                        throttle is not None
                        and path != "/robots.txt"  # never throttled: its status means too much
                        and throttle.received(time.monotonic())
                    )
                    if self.latency:
                        delay = self._latency_s(host, path, self.counts[key])
                        await asyncio.sleep(delay + self.config.connect_ms / 1000 * first)
                    first = False
                    if limited:
                        wait = {"Retry-After": str(throttle.retry_after(time.monotonic()))}
                        page = b"slow down\n"
                        keep = await self._send(writer, method, 429, page, "text/plain", wait)
                    else:
                        keep = await self._respond(
                            host, method, path, self.counts[key], writer, reader
                        )
                    await writer.drain()
                finally:
                    self._answered(writer)
                if not (keep and keep_alive):
                    return
        except (OSError, RuntimeError):  # the client hung up (uvloop: RuntimeError on write)
            return
        except asyncio.CancelledError:  # the loop is shutting down: nothing to tell
            return
        finally:
            self.connections.discard(writer)
            self.holding.discard(writer)
            if self.stopped.is_set():
                writer.transport.abort()
            else:
                writer.close()

    def _client_left(self, writer) -> bool:
        """The client closed its side (it read what it wanted, or gave up)."""
        request = self.answering.get(writer)
        return request is not None and request[1].at_eof()

    def _answered(self, writer) -> None:
        request = self.answering.pop(writer, None)
        if request is not None:
            self._leave(request[0])

    def _enter(self, keys: tuple[str, str]) -> None:
        site, host = keys
        for key in keys:
            self.in_flight[key] += 1
        if self.in_flight[site] > self.max_site[site[2:]]:
            self.max_site[site[2:]] = self.in_flight[site]
            now = time.monotonic()
            self.peak_site_requests[site[2:]] = sorted(  # which requests, and since when
                (round(now - since, 3), path)
                for (keys, _, path, since) in self.answering.values()
                if keys[0] == site
            )
        self.max_host[host[2:]] = max(self.max_host[host[2:]], self.in_flight[host])

    def _leave(self, keys: tuple[str, str]) -> None:
        for key in keys:
            self.in_flight[key] -= 1

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
    async def _robots(self, host: Host, method: str, writer) -> bool:
        self.robots_requests[self.plan.authority(host)] += 1
        kind = host.robots if self.faults else "none"
        if kind == "file":
            text = self.plan.robots_text(host).encode()
            return await self._send(writer, method, 200, text, "text/plain")
        if kind == "html":
            return await self._send(writer, method, 200, ROBOTS_HTML, "text/html")
        if kind == "5xx":
            page = b"<html><body>Service Unavailable</body></html>"
            return await self._send(writer, method, ROBOTS_5XX_STATUS, page, "text/html")
        return await self._send(writer, method, 404, b"<html>not found</html>", "text/html")

    async def _respond(
        self, host: Host, method: str, path: str, count: int, writer, reader
    ) -> bool:
        """Send the ``count``-th response to this path; False when the connection must close."""
        if path == "/robots.txt":
            return await self._robots(host, method, writer)
        hops = None
        if path.startswith("/r/"):  # a redirect hop: /r/{hops left}/{image path}
            _, _, left, rest = path.split("/", 3)
            hops, path = int(left) if left.isdigit() else 0, "/" + rest
        image = self.plan.by_path.get((host.index, path))
        if image is None:
            return await self._send(writer, method, 404, b"<html>not found</html>", "text/html")
        if image.disallowed:
            self.disallowed_requests[self.plan.authority(host)] += 1
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
            target = f"{host.scheme}://{self.plan.authority(host)}:{self.port}/r/{left}{path}"
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
            # Until the client gives up (its read timeout) or the stall ends: a request the client
            # has abandoned is no longer in flight, for the per-site counts.
            await self._hold(reader)
            return False
        if fault == "oversize":
            writer.write(_head(200, ctype, OVERSIZE_BYTES))
            await self._paced(writer, bytes(OVERSIZE_BYTES // 1024), repeat=1024)
            return False
        raise AssertionError(f"unknown fault {fault}")

    async def _send(self, writer, method, status, body, ctype, extra=None) -> bool:
        writer.write(_head(status, ctype, len(body), extra))
        if method != "HEAD" and body:
            await self._paced(writer, body)
        else:
            self._answered(writer)
        return True

    async def _paced(self, writer, body: bytes, repeat: int = 1) -> None:
        """Write ``body`` (``repeat`` times) at bytes_per_second, or at once without latency."""
        rate = self.config.bytes_per_second
        if not self.latency or rate <= 0:
            for number in range(repeat):
                writer.write(body)
                if number == repeat - 1:
                    self._answered(writer)
                await writer.drain()
            return
        loop = asyncio.get_running_loop()
        start, sent = loop.time(), 0
        step = max(16_384, int(rate / 50))
        view = memoryview(body)
        total = len(view) * repeat
        for _ in range(repeat):
            for offset in range(0, len(view), step):
                if writer.is_closing() or self._client_left(writer):  # a cap, a timeout
                    self._answered(writer)  # no longer in flight for the client either
                    return
                chunk = view[offset : offset + step]
                writer.write(chunk)
                sent += len(chunk)
                if sent >= total:
                    self._answered(writer)
                await writer.drain()
                wait = start + sent / rate - loop.time()
                if wait > 0 and sent < total:  # the last byte is out: the response is done
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

    async def set_mode(options: dict[str, str]) -> dict:
        latency = options.get("latency", str(int(server.latency))) == "1"
        faults = options.get("faults", str(int(server.faults))) == "1"
        await server.set_mode(latency, faults)
        return {"latency": server.latency, "faults": server.faults}

    async def reset(options: dict[str, str]) -> dict:
        server.reset()
        return {}

    async def stats(options: dict[str, str]) -> dict:
        return server.stats()

    serve_commands(loop, {"set": set_mode, "reset": reset, "stats": stats}, server.stop)
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
    """Start the web's server processes (and, with names, its DNS server), hand out its URLs
    and expectations, switch its mode, read its counters.

    With names, clients must resolve through the DNS server at ``dns_address``:``dns_port``;
    run them in a namespace whose resolv.conf names it (``netns.NetworkNamespace``).
    """

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
        self._servers: list[CommandedProcess] = []
        self.dns: DnsProcess | None = None
        self.startup: list[dict] = []

    @property
    def ca_file(self) -> Path:
        assert self.workdir is not None, "start the web first"
        return self.workdir / "certs" / "ca.pem"

    @property
    def dns_port(self) -> int | None:
        return self.dns.port if self.dns else None

    def start(self) -> RealWeb:
        if self._servers:
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
            if self.config.names:
                self.dns = DnsProcess(
                    self.plan.zone(),
                    address=self.config.dns_address,
                    port=self.config.dns_port,
                    servfail_ms=self.config.servfail_ms,
                    max_runtime_s=self.config.max_runtime_s,
                )
                self.dns.set_mode(latency=self.config.latency, faults=self.config.faults)
            for part in range(self.processes):
                self._servers.append(CommandedProcess(self._command_line(part), _READY_TIMEOUT_S))
                self.startup.append(self._servers[-1].ready)
                self.port = self.port or self.startup[0]["port"]
        except BaseException:
            self.stop()
            raise
        return self

    def _command_line(self, part: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mmc4_devtools.real_web",
            "--serve",
            json.dumps(asdict(self.config)),
            str(self.workdir),
            str(self.port),
            f"{part}/{self.processes}",
        ]

    def _command(self, line: str) -> list[dict]:
        for server in self._servers:
            server.send(line)
        return [server.read(30.0) for server in self._servers]

    def set_mode(self, *, latency: bool, faults: bool) -> None:
        """Switch every server process (and the DNS server); the URLs stay the same."""
        self._command(f"set latency={int(latency)} faults={int(faults)}")
        if self.dns:
            self.dns.set_mode(latency=latency, faults=faults)

    def reset(self) -> None:
        """Forget request counts and in-flight maxima (flaky hosts fail again, latency draws
        repeat) and empty the DNS server's cache: one per run."""
        self._command("reset")
        if self.dns:
            self.dns.reset()

    def stats(self) -> dict:
        """Requests served, CPU seconds of the web (servers and DNS), and per site and host:
        the most requests in flight at once since the last reset (``max_in_flight_site``,
        ``max_in_flight_host``), robots.txt requests, requests for images robots.txt closes to
        us (``disallowed_requests``), and per throttled site its 429s, pause windows and
        requests received inside an announced pause (``throttle``). Hosts are keyed as URLs
        name them (name or IP), sites by registrable domain (IP mode: the IP)."""
        replies = self._command("stats")
        merged: dict = {"requests": sum(r["requests"] for r in replies)}
        for key in (
            "max_in_flight_site",
            "max_in_flight_host",
            "robots_requests",
            "disallowed_requests",
            "throttle",
            "peak_site_requests",
        ):
            merged[key] = {k: v for r in replies for k, v in r[key].items()}  # disjoint sites
        site_max = merged["max_in_flight_site"]
        merged["max_in_flight_any_site"] = max(site_max.values(), default=0)
        merged["max_in_flight_any_host"] = max(merged["max_in_flight_host"].values(), default=0)
        merged["cpu_s"] = sum(server.cpu_seconds() for server in self._servers)
        if self.dns:
            merged["dns"] = self.dns.stats()
            merged["cpu_s"] += merged["dns"]["cpu_s"]
        return merged

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
        self._servers = []
        if self.dns:
            self.dns.stop()
            self.dns = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RealWeb:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, image: PlannedImage) -> str:
        return self.plan.url(image, self.port)

    def entries(self) -> list[dict]:
        """One dict per image: image_name, url, expect (with faults on), host (as the URL
        names it), site, host_kind, dns (the name's fate), robots_disallowed, fault."""
        out = []
        for image in self.plan.images:
            host = self.plan.hosts[image.host]
            name = hashlib.sha1(f"{host.ip}{image.path}".encode()).hexdigest()[:16]
            out.append(
                {
                    "image_name": name + "." + image.path.rsplit(".", 1)[1],
                    "url": self.url(image),
                    "expect": image.expect,
                    "host": self.plan.authority(host),
                    "site": self.plan.site(host),
                    "host_kind": host.kind,
                    "dns": host.dns if self.plan.names else "ok",
                    "robots_disallowed": image.disallowed,
                    "fault": image.fault,
                }
            )
        return out


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
    parser.add_argument("--ip", action="store_true", help="URLs hold IP literals (no DNS)")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--urls", default="realweb-urls.tsv", help="where to write url<TAB>expect")
    args = parser.parse_args(argv)
    options = {
        f.name: getattr(args, f.name) for f in fields(RealWebConfig) if hasattr(args, f.name)
    }
    config = RealWebConfig(
        **options, names=not args.ip, latency=not args.no_latency, faults=not args.no_faults
    )
    with RealWeb(config, processes=args.processes) as web:
        with open(args.urls, "w") as out:
            for entry in web.entries():
                expect = entry["expect"] if config.faults else "ok"
                out.write(f"{entry['url']}\t{expect}\n")
        print(json.dumps(web.plan.summary()), flush=True)
        print(f"urls: {args.urls}\nCA: {web.ca_file}", flush=True)
        if web.dns:
            print(f"DNS: {config.dns_address}:{web.dns_port} (resolve through it)", flush=True)
        print("Ctrl-C to stop", flush=True)
        try:
            while all(s.proc.poll() is None for s in web._servers):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
