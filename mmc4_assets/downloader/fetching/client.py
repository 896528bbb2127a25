"""The HTTP client of the image downloader: one pooled, policy-checked, deadline-bound fetcher.

One urllib3 PoolManager (keep-alive, no environment proxies) serves every thread. Each image has
a total deadline that covers every attempt, redirect hop, header and body byte: a watchdog thread
shuts the socket of any request that outlives it, so a server trickling one byte per second
cannot hold a worker past the deadline. Retries (timeouts, connection errors, 429, 5xx) back off
exponentially with jitter and honour Retry-After up to a cap; a Retry-After above the cap ends
the image as ``rate_limited`` rather than hammer the host early.

Classification: a body cut short against its Content-Length (the connection closed mid-body) is
``connection_error`` and retried; a body that arrives complete but holds a truncated image is
judged later by imaging (``corrupt``). DNS failures and TLS errors are ``connection_error`` but
not retried (they do not clear in seconds).
"""

from __future__ import annotations

import email.utils
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    LocationValueError,
    NameResolutionError,
    ReadTimeoutError,
    SSLError,
)

from .netguard import AddressPolicy, BlockedAddress, guarded_pool_manager, set_socket_hook

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_DRAIN_LIMIT = 64 * 1024
_OPT_OUT_TOKENS = frozenset({"noai", "noimageai"})


@dataclass(frozen=True)
class FetchOptions:
    """The knobs of one fetcher (DownloadSettings carries the same names)."""

    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    total_deadline: float = 30.0
    max_bytes: int = 25_000_000
    max_redirects: int = 5
    max_attempts: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    retry_after_cap: float = 30.0
    user_agent: str = "mmc4-assets/0.1 (+https://github.com/allenai/mmc4)"
    respect_opt_out: bool = True
    allow_private_networks: bool = False
    allowed_networks: tuple[str, ...] = ()
    pool_connections: int = 512
    per_host: int = 8


@dataclass
class FetchResult:
    """What one image's fetch produced.

    ``outcome`` is None when a body arrived (to be validated by imaging), ``"not_modified"`` for
    a 304, else a final status outcome (timeout, http_error, blocked, ...).
    """

    outcome: str | None
    http_status: int | None = None
    error: str | None = None
    body: bytes | None = None
    etag: str | None = None
    last_modified: str | None = None
    final_url: str | None = None
    attempts: int = 0
    retry_after: float | None = field(default=None, repr=False)
    final: bool = field(default=False, repr=False)

    @property
    def retryable(self) -> bool:
        if self.final:
            return False
        if self.outcome in ("timeout", "connection_error", "rate_limited"):
            return True
        return self.outcome == "http_error" and (self.http_status or 0) >= 500


class InvalidUrl(ValueError):
    """Not an absolute http(s) URL we can request."""


def check_url(url: str) -> str:
    """Return ``url`` stripped if it is a usable http(s) URL, else raise InvalidUrl."""
    if not isinstance(url, str):
        raise InvalidUrl("url is not text")
    url = url.strip()
    if not url:
        raise InvalidUrl("empty url")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise InvalidUrl("control character in url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise InvalidUrl(f"unparsable url: {error}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidUrl(f"scheme {parts.scheme or '(none)'!r} is not http(s)")
    if not parts.hostname:
        raise InvalidUrl("url has no host")
    if port == 0:
        raise InvalidUrl("port 0")
    return url


def host_of(url: str) -> str:
    """The lower-cased host name of ``url`` ("" when it has none); the per-host limit's key."""
    try:
        return (urlsplit(url.strip()).hostname or "").lower()
    except ValueError:
        return ""


def opted_out(values: list[str]) -> bool:
    """True when any X-Robots-Tag value carries noai / noimageai (with or without a bot prefix)."""
    for value in values:
        if _OPT_OUT_TOKENS & set(re.findall(r"[a-z0-9_-]+", value.lower())):
            return True
    return False


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or HTTP date); None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


class _Guard:
    __slots__ = ("deadline", "sock", "expired")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.sock: socket.socket | None = None
        self.expired = False


class _Watchdog:
    """Shuts the socket of any request that outlives its deadline (one daemon thread)."""

    def __init__(self, tick: float = 0.05) -> None:
        self._tick = tick
        self._lock = threading.Lock()
        self._guards: set[_Guard] = set()
        self._local = threading.local()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="fetch-watchdog", daemon=True)
            self._thread.start()

    def enter(self, deadline: float) -> _Guard:
        guard = _Guard(deadline)
        with self._lock:
            self._ensure_thread()
            self._guards.add(guard)
        self._local.guard = guard
        self._wake.set()
        return guard

    def leave(self, guard: _Guard) -> None:
        with self._lock:
            self._guards.discard(guard)
            guard.sock = None
        self._local.guard = None

    def on_socket(self, sock: socket.socket) -> None:
        guard = getattr(self._local, "guard", None)
        if guard is None:
            return
        with self._lock:
            guard.sock = sock
            if guard.expired:
                _shutdown(sock)

    def _run(self) -> None:
        while True:
            with self._lock:
                idle = not self._guards
            if idle:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            time.sleep(self._tick)
            now = time.monotonic()
            with self._lock:
                for guard in self._guards:
                    if not guard.expired and now >= guard.deadline:
                        guard.expired = True
                        if guard.sock is not None:
                            _shutdown(guard.sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


_WATCHDOG = _Watchdog()
set_socket_hook(_WATCHDOG.on_socket)


class HttpFetcher:
    """Fetch image bodies under the address policy, the byte cap and a per-image deadline."""

    def __init__(self, options: FetchOptions) -> None:
        self.options = options
        self._pool = guarded_pool_manager(
            AddressPolicy(options.allow_private_networks, options.allowed_networks),
            num_pools=options.pool_connections,
            maxsize=max(1, options.per_host),
            block=False,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=_ca_bundle(),
        )
        self._headers = {
            "User-Agent": options.user_agent,
            "Accept": "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.9,*/*;q=0.5",
            "Accept-Encoding": "gzip, deflate",
        }

    def close(self) -> None:
        self._pool.clear()

    def __enter__(self) -> HttpFetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def fetch(
        self,
        url: str,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        deadline: float | None = None,
        sleep=time.sleep,
    ) -> FetchResult:
        """Fetch ``url`` with retries; conditional when ``etag`` / ``last_modified`` are given."""
        opts = self.options
        if deadline is None:
            deadline = time.monotonic() + opts.total_deadline
        try:
            url = check_url(url)
        except InvalidUrl as error:
            return FetchResult("invalid_url", error=str(error), attempts=0)
        headers = dict(self._headers)
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        attempt = 0
        while True:
            attempt += 1
            result = self._attempt(url, headers, deadline)
            result.attempts = attempt
            if not result.retryable or attempt >= opts.max_attempts:
                return result
            wait = min(opts.backoff_max, opts.backoff_base * 2 ** (attempt - 1))
            wait *= random.uniform(0.5, 1.0)
            if result.retry_after is not None:
                if result.retry_after > opts.retry_after_cap:
                    result.error = f"Retry-After {result.retry_after:.0f}s exceeds the cap"
                    return result
                wait = result.retry_after + random.uniform(0.0, 0.1)
            if time.monotonic() + wait >= deadline:
                return result
            sleep(wait)

    def _attempt(self, url: str, headers: dict, deadline: float) -> FetchResult:
        """One attempt: follow up to max_redirects hops, each re-checked by the policy."""
        current = url
        for _ in range(self.options.max_redirects + 1):
            result, location = self._hop(current, headers, deadline)
            if location is None:
                result.final_url = current
                return result
            try:
                current = check_url(urljoin(current, location))
            except InvalidUrl as error:
                return FetchResult("invalid_url", error=f"redirect: {error}", final_url=current)
        return FetchResult(
            "http_error",
            http_status=result.http_status,
            error=f"more than {self.options.max_redirects} redirects",
            final_url=current,
        )

    def _hop(self, url: str, headers: dict, deadline: float) -> tuple[FetchResult, str | None]:
        opts = self.options
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return FetchResult("timeout", error="deadline passed"), None
        timeout = urllib3.Timeout(
            connect=min(opts.connect_timeout, remaining), read=min(opts.read_timeout, remaining)
        )
        guard = _WATCHDOG.enter(deadline)
        response = None
        try:
            try:
                response = self._pool.urlopen(
                    "GET",
                    url,
                    headers=headers,
                    redirect=False,
                    retries=False,
                    preload_content=False,
                    decode_content=True,
                    timeout=timeout,
                    assert_same_host=False,
                )
                return self._handle(response, guard)
            except BlockedAddress as error:
                return FetchResult("blocked", error=str(error)), None
            except Exception as error:  # noqa: BLE001 - every failure becomes a status row
                if response is not None:
                    response.close()
                return _classify(error, guard), None
        finally:
            _WATCHDOG.leave(guard)
            if response is not None:
                response.release_conn()

    def _handle(self, response, guard: _Guard) -> tuple[FetchResult, str | None]:
        opts = self.options
        status = response.status
        head = response.headers
        etag = head.get("ETag")
        last_modified = head.get("Last-Modified")
        if status in REDIRECT_STATUSES:
            location = head.get("Location")
            _discard(response)
            if not location:
                return FetchResult("http_error", status, "redirect without Location"), None
            return FetchResult(None, status), location
        if status == 304:
            _discard(response)
            return FetchResult("not_modified", 304, etag=etag, last_modified=last_modified), None
        if status == 429:
            _discard(response)
            result = FetchResult("rate_limited", 429, "HTTP 429")
            result.retry_after = parse_retry_after(head.get("Retry-After"))
            return result, None
        if not 200 <= status < 300:
            _discard(response)
            result = FetchResult("http_error", status, f"HTTP {status}")
            if status >= 500:
                result.retry_after = parse_retry_after(head.get("Retry-After"))
            return result, None
        if opts.respect_opt_out and opted_out(head.getlist("X-Robots-Tag")):
            _discard(response)
            return FetchResult("opted_out", status, "X-Robots-Tag opts out of AI use"), None
        length = head.get("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > opts.max_bytes:
            response.close()
            return FetchResult("too_large", status, f"Content-Length {length} over cap"), None
        chunks: list[bytes] = []
        received = 0
        while True:
            data = response.read(_CHUNK, decode_content=True)
            if not data:
                break
            received += len(data)
            if received > opts.max_bytes:
                response.close()
                return FetchResult("too_large", status, f"body over {opts.max_bytes} bytes"), None
            chunks.append(data)
        if guard.expired:
            return FetchResult("timeout", status, "total deadline passed"), None
        body = b"".join(chunks)
        return FetchResult(None, status, body=body, etag=etag, last_modified=last_modified), None


def _ca_bundle() -> str | None:
    """certifi's CA bundle when installed (it comes with requests), else the system store."""
    try:
        import certifi
    except ImportError:
        return None
    return certifi.where()


def _discard(response) -> None:
    """Drop a response body we do not want, keeping the connection when that is cheap."""
    length = response.headers.get("Content-Length")
    try:
        if length is not None and length.strip().isdigit() and int(length) <= _DRAIN_LIMIT:
            response.read(decode_content=False)
        else:
            response.close()
    except Exception:  # noqa: BLE001
        response.close()


def _classify(error: BaseException, guard: _Guard) -> FetchResult:
    """Map a client exception to an outcome (the deadline wins over whatever broke)."""
    text = f"{type(error).__name__}: {error}"[:500]
    if guard.expired:
        return FetchResult("timeout", error="total deadline passed")
    if isinstance(error, (LocationValueError, InvalidUrl)):
        return FetchResult("invalid_url", error=text)
    if isinstance(error, (ConnectTimeoutError, ReadTimeoutError, TimeoutError, socket.timeout)):
        return FetchResult("timeout", error=text)
    if isinstance(error, DecodeError):
        return FetchResult("corrupt", error=f"content-encoding: {text}")
    if isinstance(error, (NameResolutionError, SSLError)):
        # Permanent in practice: report as a connection error without burning retries.
        return FetchResult("connection_error", error=text, final=True)
    # HTTPError, OSError, http.client errors and anything else unexpected.
    return FetchResult("connection_error", error=text)
