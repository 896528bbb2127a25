"""How the image engine fetches: concurrency, limits, retries, identity, policy and trust."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DownloadSettings:
    """Every knob of one shard run; the defaults are the polite, safe ones used in production."""

    # Requests in flight at once. Cheap (one coroutine and socket each): latency is hidden by
    # having many, memory is bounded by max_bytes_in_flight, CPU by decode_workers.
    max_concurrency: int = 256
    # Requests in flight to one site (a registrable domain: every host name under it) across
    # every run sharing ``ledger_url``. Adaptive: each site's limit is learned from its answers
    # (politeness/capacity.py), starting at ``per_site``, never above ``max_per_site`` or the
    # site's entry in ``site_budgets`` (its ceiling). Not adaptive: ``per_site`` and
    # ``site_budgets`` are fixed budgets. The start is low because a small server that serves
    # 2 at once sheds requests past 4 (docs/politeness.md).
    per_site: int = 4
    max_per_site: int = 64
    site_budgets: tuple[tuple[str, int], ...] = ()
    adaptive: bool = True
    # Where the runs of a deployment share site budgets and throttle state: "postgresql://…"
    # (the instance's database), "sqlite:///path" (one machine), None (this run only).
    ledger_url: str | None = None
    # A run's slots outlive it by at most this (kill -9); renewed every third of it.
    site_lease_seconds: float = 30.0
    # Obey robots.txt (RFC 9309) for our product token ``mmc4-assets`` and ``*``.
    respect_robots_txt: bool = True
    connect_timeout: float = 5.0
    # Seconds without a byte from the server (waiting for headers included).
    read_timeout: float = 10.0
    # Seconds per image from its first attempt: every attempt, hop, byte and wait between tries.
    total_deadline: float = 30.0
    max_bytes: int = 25_000_000
    max_pixels: int = 100_000_000
    max_redirects: int = 5
    max_attempts: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    # The longest pause a site can impose on every run (Retry-After, or backoff after 429/503);
    # images that cannot wait it out end ``rate_limited``, for the stale-image sensor.
    retry_after_cap: float = 3600.0
    user_agent: str = "mmc4-assets/0.1 (+https://github.com/allenai/mmc4)"
    respect_opt_out: bool = True
    allow_private_networks: bool = False
    # Private networks reachable even when allow_private_networks is off (e.g. "10.1.2.0/24").
    allowed_networks: tuple[str, ...] = ()
    # A PEM file of CA certificates trusted in addition to certifi's bundle (a TLS-inspecting
    # proxy's CA, a test CA). Only additions: certificates are always verified.
    ca_bundle: str | None = None
    max_side: int = 800
    # Images decoded at once (0: one per CPU): more buys no speed, only memory.
    decode_workers: int = 0
    # Processes fetching a shard, each owning a share of its hosts (0: two per CPU, fewer for
    # small shards; 1: all in this process). One process's loop and TLS hold the GIL its
    # decoders need, so one process cannot keep even two cores busy.
    fetch_processes: int = 0
    # Body bytes held at once: received or waiting for a decoder, plus a mean body for each
    # request in flight. Past it, no new request starts until bodies arrive and are decoded.
    max_bytes_in_flight: int = 96_000_000
    # Failed connections (refused, reset, timed out, no answer) to a host that has not answered
    # once this run, after which its remaining images end at once as retryable failures.
    breaker_failures: int = 3
    # Stand-ins within a shard (storing/standins.py): a body one site serves under at least
    # ``standin_min_urls`` distinct URLs from at least ``standin_min_documents`` documents is
    # ``placeholder`` (0: no body is, by its count); an image with a side under
    # ``min_image_side`` px is ``too_small``.
    standin_min_urls: int = 5
    standin_min_documents: int = 3
    min_image_side: int = 10
    # Known stand-in URLs besides the shipped list (standins.STANDIN_URLS): (site, regular
    # expression of the path), e.g. ("example-cdn.com", r"/default-image\.png$").
    standin_urls: tuple[tuple[str, str], ...] = ()
    # Duplicates within a shard (storing/duplicates.py), recorded in ``duplicate_of``: the same
    # body, or perceptual hashes at most this many bits apart (-1: exact duplicates only).
    duplicate_max_distance: int = 4


class CaBundleError(ValueError):
    """The configured CA bundle cannot be used."""


def tls_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """A verifying client context trusting certifi's CAs plus those in ``ca_bundle``.

    Raises CaBundleError, naming the file, when it is missing, unreadable or holds no
    certificate: a run must stop at its start, not record ten thousand TLS failures.
    """
    import certifi

    context = ssl.create_default_context(cafile=certifi.where())
    if ca_bundle:
        path = Path(ca_bundle).expanduser()
        try:
            pem = path.read_text(encoding="ascii", errors="replace")
        except OSError as error:
            raise CaBundleError(f"ca_bundle {ca_bundle}: cannot read it ({error})") from None
        if "-----BEGIN CERTIFICATE-----" not in pem:
            raise CaBundleError(f"ca_bundle {ca_bundle}: no PEM certificate in it")
        try:
            context.load_verify_locations(cadata=pem)
        except (ssl.SSLError, ValueError) as error:
            raise CaBundleError(f"ca_bundle {ca_bundle}: not usable ({error})") from None
    return context
