"""robots.txt (RFC 9309): fetched once per origin, obeyed before any image is requested.

Rules are matched for our product token (``mmc4-assets``) and, where no group names it, ``*``,
by ``protego``. RFC 9309's error rules: a 4xx (the file is unavailable) allows everything; a
5xx, a 429, or a host we cannot reach means "assume complete disallow" for now, so that host's
images end this run as retryable failures (the stale-image sensor tries them again after its
cool-down). Redirects are followed (five hops at most), at most the first 500 KiB is parsed,
and a ``Crawl-delay`` for us spaces the origin's requests. What we fetched is kept
(``RobotsEntry``) for 24 hours in the site ledger's database (``robots_cache.py``), so reruns and
other runs do not fetch it again.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from protego import Protego

from ..fetching.client import FetchResult

PRODUCT_TOKEN = "mmc4-assets"
ROBOTS_MAX_BYTES = 500 * 1024  # RFC 9309: parse at least the first 500 KiB
ROBOTS_MAX_AGE_S = 24 * 3600.0  # RFC 9309: do not use a cached copy for more than 24 hours
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str:
    """``scheme://host:port`` of ``url``: robots.txt applies to exactly one such origin."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6
        host = f"[{host}]"
    port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    return f"{scheme}://{host}:{port}"


def robots_url(origin: str) -> str:
    scheme, rest = origin.split("://", 1)
    host, _, port = rest.rpartition(":")
    if _DEFAULT_PORTS.get(scheme) == int(port):
        return f"{scheme}://{host}/robots.txt"
    return f"{origin}/robots.txt"


@dataclass(frozen=True)
class RobotsEntry:
    """One origin's robots.txt as fetched: what the cache keeps and the crawl obeyed."""

    origin: str
    fetched_at: float  # Unix time
    status: int  # the final HTTP status (after redirects)
    body: str = ""  # the first 500 KiB of a 2xx answer; empty otherwise

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RobotsEntry | None:
        """The entry, or None when ``data`` is not one (a damaged cache file is refetched)."""
        try:
            raw = json.loads(data)
            return cls(
                str(raw["origin"]),
                float(raw["fetched_at"]),
                int(raw["status"]),
                str(raw.get("body") or ""),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def fresh(self, now: float) -> bool:
        return 0 <= now - self.fetched_at < ROBOTS_MAX_AGE_S


@dataclass(frozen=True)
class RobotsVerdict:
    """What an origin's robots.txt means for us: its rules, or a failure for this run."""

    rules: Protego | None = None  # None with no failure: everything allowed
    failure: FetchResult | None = None  # the outcome every image of the origin gets this run

    def allows(self, url: str) -> bool:
        return self.rules is None or self.rules.can_fetch(url, PRODUCT_TOKEN)

    @property
    def crawl_delay(self) -> float | None:
        if self.rules is None:
            return None
        delay = self.rules.crawl_delay(PRODUCT_TOKEN)
        return float(delay) if delay and delay > 0 else None


ALLOW_ALL = RobotsVerdict()


def verdict_of(entry: RobotsEntry) -> RobotsVerdict:
    if 200 <= entry.status < 300 and entry.body.strip():
        return RobotsVerdict(rules=Protego.parse(entry.body))
    return ALLOW_ALL  # 2xx with nothing in it, or 4xx: the file is unavailable


def judge_fetch(origin: str, result: FetchResult, now: float | None = None):
    """(verdict, entry to cache or None) for the outcome of fetching ``origin``'s robots.txt."""
    now = time.time() if now is None else now
    status = result.http_status
    if result.outcome is None and status is not None and 200 <= status < 300:
        body = (result.body or b"")[:ROBOTS_MAX_BYTES].decode("utf-8", errors="replace")
        entry = RobotsEntry(origin, now, status, body)
        return verdict_of(entry), entry
    if (
        result.outcome == "http_error"
        and status is not None
        and 400 <= status < 500
        or (result.outcome == "http_error" and "redirects" in (result.error or ""))
    ):
        # Unavailable (4xx), or more than five redirects (RFC 9309 allows treating it as such).
        entry = RobotsEntry(origin, now, status or 0)
        return ALLOW_ALL, entry
    failure = _failure(result)
    return RobotsVerdict(failure=failure), None


def _failure(result: FetchResult) -> FetchResult:
    """The outcome the origin's images get when its robots.txt cannot be read this run."""
    status = result.http_status
    if result.outcome in ("blocked", "invalid_url"):
        what = result.error
    elif status is not None:
        what = f"robots.txt answered HTTP {status}"
    else:
        what = f"robots.txt unreachable: {result.error}"
    outcome = result.outcome or "http_error"
    if outcome == "rate_limited" or (outcome == "http_error" and (status or 0) >= 500):
        failure = FetchResult(outcome, http_status=status, error=what, final=True)
    elif outcome in ("timeout", "connection_error", "blocked", "invalid_url"):
        failure = FetchResult(outcome, error=what, final=True)
    else:  # a 2xx that failed otherwise (cut short): retry next run
        failure = FetchResult("connection_error", http_status=status, error=what, final=True)
    failure.host_failure = result.host_failure
    return failure


class RobotsBook:
    """The robots.txt verdicts of one fetch loop's origins: cached ones, then fetched ones."""

    def __init__(self, cached: dict[str, RobotsEntry]) -> None:
        self._cached = cached
        self._verdicts: dict[str, RobotsVerdict] = {}
        self.fetched: list[RobotsEntry] = []  # to store for other runs
        self.cache_hits = 0

    def verdict(self, origin: str) -> RobotsVerdict | None:
        """The origin's verdict, or None when its robots.txt must be fetched first."""
        verdict = self._verdicts.get(origin)
        if verdict is None:
            entry = self._cached.get(origin)
            if entry is None:
                return None
            verdict = self._verdicts[origin] = verdict_of(entry)
            self.cache_hits += 1
        return verdict

    def record(self, origin: str, result: FetchResult) -> RobotsVerdict:
        """The verdict of a fetch of the origin's robots.txt."""
        verdict, entry = judge_fetch(origin, result)
        self._verdicts[origin] = verdict
        if entry is not None:
            self.fetched.append(entry)
        return verdict
