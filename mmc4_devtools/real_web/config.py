"""The web's knobs: ``RealWebConfig`` (defaults shaped like a real mmc4 shard's web) and
``OLD_SHAPE``, the web the download benchmark measured before names."""

from __future__ import annotations

import json
from dataclasses import dataclass


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
    # Stand-ins (off by default; standins.py): sites answering dead URLs with one "image
    # removed" or "no hotlinking" picture, imgur's redirect to removed.png (names mode), tracking
    # pixels and spacer GIFs, and real photos used by several documents or on two sites.
    standins: bool = False
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
