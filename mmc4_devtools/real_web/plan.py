"""The plan: which host holds which image, each host's address, name, site, scheme and fate,
each image's fault and expected outcome; a pure function of the configuration, so the server
children and the client compute the same one."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

from mmc4_devtools.dns_server import NameRecord
from mmc4_devtools.real_web.config import RealWebConfig
from mmc4_devtools.real_web.faults import (
    DISALLOWED_OUTCOME,
    DNS_OUTCOME,
    FAULTS,
    HOST_OUTCOMES,
    ROBOTS_5XX_OUTCOME,
)
from mmc4_devtools.real_web.pool import pool_formats
from mmc4_devtools.real_web.sites import CDN_NAMES, ROBOTS_FILES, host_names, site_of
from mmc4_devtools.real_web.standins import add_standins, is_standin

SUBNET = "127.77"  # hosts live in 127.77.0.0/16, away from the 127.0.0.x other tools use


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
    # Stand-ins on (standins.py): extra refs (image, k) of an ok image's URL, each in a document
    # of its own; and image -> the image whose body it serves (one photo on two sites).
    reuses: tuple[tuple[int, int], ...] = ()
    same_body: dict[int, int] = field(default_factory=dict)
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

    def body_index(self, image: PlannedImage) -> int:
        """Whose trailer the image's body carries: its own, or the image it is a copy of."""
        return self.same_body.get(image.index, image.index)

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
        if any(is_standin(i.fault) for i in self.images):
            out["standins"] = dict(Counter(i.fault for i in self.images if is_standin(i.fault)))
            out["reused_urls"] = len({image for image, _ in self.reuses})
            out["copies_on_other_sites"] = len(self.same_body)
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
    # Every draw below comes from this one generator, in this order: the plan depends on it.
    rng = random.Random(config.seed)
    names = host_names(random.Random(f"{config.seed}:names"), n)
    hosts = _hosts(config, rng, names, _draw_fates(config, rng, names))
    owners = _owners(config, rng, n)
    placement = _place_under_robots(config, rng, hosts, owners)
    fault_of = _draw_faults(config, rng, hosts, owners, placement.closed)
    formats = pool_formats(config)
    images = _images(config, rng, hosts, owners, placement, fault_of, formats)
    reuses: tuple[tuple[int, int], ...] = ()
    same_body: dict[int, int] = {}
    if config.standins:  # drawn from a generator of their own: without, the plan is unchanged
        hosts, images, reuses, same_body = add_standins(config, hosts, images)
    plan = Plan(hosts, images, formats, config.names, reuses=reuses, same_body=same_body)
    if config.throttle_sites:
        plan.throttled_sites = _throttled_sites(plan, config.throttle_sites)
    return plan


@dataclass(frozen=True)
class _Fates:
    """Host indexes: which hosts are dead or silent, which names fail, which robots.txt each
    host serves (drawn as sets, one after the other)."""

    dead: set[int]
    silent: set[int]
    nxdomain: set[int]
    servfail: set[int]
    mute: set[int]  # names never answered
    robots_5xx: set[int]
    robots_html: set[int]
    robots_file: set[int]

    def kind(self, i: int) -> str:
        return "dead" if i in self.dead else "silent" if i in self.silent else "live"

    def dns(self, i: int) -> str:
        if i in self.nxdomain:
            return "nxdomain"
        if i in self.servfail:
            return "servfail"
        return "silent" if i in self.mute else "ok"

    def robots(self, i: int) -> str:
        if i in self.robots_5xx:
            return "5xx"
        if i in self.robots_html:
            return "html"
        return "file" if i in self.robots_file else "none"


def _draw_fates(config: RealWebConfig, rng: random.Random, names: list[str]) -> _Fates:
    n = len(names)
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
    return _Fates(dead, silent, nxdomain, servfail, mute, robots_5xx, robots_html, robots_file)


def _hosts(
    config: RealWebConfig, rng: random.Random, names: list[str], fates: _Fates
) -> list[Host]:
    """One Host per name: its scheme (CDNs always HTTPS), fate, first-lookup latency and, for
    a host serving a file, which robots.txt."""
    whole = config.robots_disallowed > 0  # files closing a whole host only when any are asked
    files = [i for i, f in enumerate(ROBOTS_FILES) if whole or f.disallowed != "/"]
    file_weights = [ROBOTS_FILES[i].weight for i in files]
    dns_rng = random.Random(f"{config.seed}:dns")
    hosts = []
    for i, name in enumerate(names):
        first_ms = config.dns_median_ms * math.exp(config.dns_sigma * dns_rng.gauss(0, 1))
        scheme = "https" if rng.random() < config.https_fraction else "http"
        hosts.append(
            Host(
                i,
                host_ip(i),
                name,
                site_of(name),
                "https" if name in CDN_NAMES else scheme,
                fates.kind(i),
                fates.dns(i),
                round(min(first_ms, config.dns_cap_ms), 1),
                fates.robots(i),
                rng.choices(files, file_weights)[0] if i in fates.robots_file else -1,
            )
        )
    return hosts


def _owners(config: RealWebConfig, rng: random.Random, n: int) -> list[int]:
    """Each image's host: one image on every host, the rest by Zipf weight; shuffled."""
    owners = list(range(n))
    weights = [1.0 / (rank + 1) ** config.host_skew for rank in range(n)]
    owners += rng.choices(range(n), weights=weights, k=config.images - n)
    rng.shuffle(owners)
    return owners


class _Placement(NamedTuple):
    folders: dict[int, str]  # image -> the folder its path is under, when robots.txt chose it
    closed: set[int]  # images robots.txt closes to mmc4-assets


def _place_under_robots(
    config: RealWebConfig, rng: random.Random, hosts: list[Host], owners: list[int]
) -> _Placement:
    """robots.txt: whole hosts closed ("/"), then images put under closed folders up to the
    share; some more under folders only other groups close (traps for a wrong parser)."""
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
    return _Placement(placed, closed)


def _draw_faults(
    config: RealWebConfig,
    rng: random.Random,
    hosts: list[Host],
    owners: list[int],
    closed: set[int],
) -> dict[int, str]:
    """Image -> its fault: ``fault_fraction`` of the images a live host would serve, every
    kind at least once when there are enough, the rest by weight."""
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
    return dict(zip(rng.sample(servable, len(faults)), faults, strict=True))


def _images(
    config: RealWebConfig,
    rng: random.Random,
    hosts: list[Host],
    owners: list[int],
    placement: _Placement,
    fault_of: dict[int, str],
    formats: list[str],
) -> list[PlannedImage]:
    """One PlannedImage per owner: its pool picture, path, fault and expected outcome."""
    images = []
    for i, owner in enumerate(owners):
        pool = rng.randrange(len(formats))
        fault = fault_of.get(i)
        disallowed = i in placement.closed
        expect = _expect(config, hosts[owner], fault, disallowed)
        folder = placement.folders.get(i, f"/img/{i // 1000:02d}/")
        path = f"{folder}{i:06d}.{formats[pool]}"
        images.append(PlannedImage(i, owner, path, pool, fault, expect, disallowed))
    return images


def _expect(config: RealWebConfig, host: Host, fault: str | None, disallowed: bool) -> str:
    """The outcome a correct downloader records for an image (with faults on)."""
    if host.kind != "live":
        return HOST_OUTCOMES[host.kind]
    if config.names and host.dns != "ok":
        return DNS_OUTCOME
    if host.robots == "5xx":
        return ROBOTS_5XX_OUTCOME
    if disallowed:
        return DISALLOWED_OUTCOME
    return FAULTS[fault][1] if fault else "ok"


def _throttled_sites(plan: Plan, count: int) -> frozenset[str]:
    """The ``count`` sites with the most images."""
    per_site = Counter(plan.site(plan.hosts[image.host]) for image in plan.images)
    return frozenset(s for s, _ in per_site.most_common(count))
