"""The HTTP client of the image engine: asyncio, pooled, policy-checked, deadline-bound.

One aiohttp session serves a whole shard run: keep-alive connections per host, DNS answers kept
for the run (GuardedResolver, which also applies the address policy), TLS verified against
certifi plus the optional ``ca_bundle``. ``attempt`` makes one try at an image, following up to
``max_redirects`` hops, each re-checked; ``retry_delay`` says whether and when to try again; the
scheduler requeues the image instead of holding a slot while it waits.

Time limits: ``connect_timeout`` for the TCP and TLS handshake, ``read_timeout`` for any silence
from the server (waiting for headers included), and the image's total deadline over everything,
so a server trickling one byte per second cannot hold an image past it.

Classification: a body cut short against its Content-Length (the connection closed mid-body) is
``connection_error`` and retried; a body that arrives complete but holds a truncated image is
judged later by imaging (``corrupt``). DNS failures and TLS errors are ``connection_error`` but
not retried (they do not clear in seconds). A timeout is retried only on a host that has
answered this run: one that let us wait the full read timeout without a word is left to the
stale-image sensor. Failures that speak for the whole host (``host_failure``) feed the breaker.

Why one module of ~430 lines: ``attempt`` and the classification of its errors read the same
attempt state (``_AttemptState``) and must change together; the session's set-up (resolver,
TLS, timing trace) is the part that could move, but it is what ``attempt`` relies on.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import aiohttp
from yarl import URL

from ..settings import DownloadSettings, tls_context
from .netguard import AddressPolicy, BlockedAddress, check_literal
from .resolver import GuardedResolver
from .urls import InvalidUrl, check_url, opted_out, parse_retry_after

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DRAIN_LIMIT = 64 * 1024
# Idle keep-alive connections are closed after this: most hosts hold one to three images, and
# while the decoders are behind, idle connections wait for nothing (each holds ~50 KB).
_KEEPALIVE_SECONDS = 1.0
_RETRYABLE = frozenset({"timeout", "connection_error", "rate_limited"})
# Answers that mean "slow down": they pause the whole site, for every run.
THROTTLE_STATUSES = frozenset({429, 503})


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
    # The host answered (any HTTP response) during this attempt.
    answered: bool = field(default=False, repr=False)
    # A failure that speaks for the host as a whole (see breaker.HOST_FAILURES), else None.
    host_failure: str | None = field(default=None, repr=False)
    # Seconds from the request's headers sent to the response's head received (the last hop's):
    # how long the server took, without name lookup, connection or body transfer.
    head_seconds: float | None = field(default=None, repr=False)

    @property
    def retryable(self) -> bool:
        if self.final:
            return False
        if self.outcome in _RETRYABLE:
            return True
        return self.outcome == "http_error" and (self.http_status or 0) >= 500


class ByteMeter:
    """Body bytes held right now (received, or waiting for a decoder), and the mean body size.

    The mean lets the scheduler count bytes that requests in flight are about to bring.
    """

    def __init__(self, first_guess: int = 256 * 1024) -> None:
        self.held = 0
        self.peak = 0
        self._bodies = 1
        self._body_bytes = first_guess

    def add(self, count: int) -> None:
        self.held += count
        self.peak = max(self.peak, self.held)

    def release(self, count: int) -> None:
        self.held -= count

    def observe(self, body_size: int) -> None:
        self._bodies += 1
        self._body_bytes += body_size

    @property
    def mean_body(self) -> float:
        return self._body_bytes / self._bodies


class HttpClient:
    """Fetch image bodies under the address policy, the byte cap and per-image deadlines.

    An async context manager: enter it inside the event loop that will use it.
    """

    def __init__(self, settings: DownloadSettings, tls: ssl.SSLContext | None = None) -> None:
        self.settings = settings
        self.policy = AddressPolicy(settings.allow_private_networks, settings.allowed_networks)
        self._tls = tls if tls is not None else tls_context(settings.ca_bundle)
        self._session: aiohttp.ClientSession | None = None
        self._headers = {
            "User-Agent": settings.user_agent,
            "Accept": "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.9,*/*;q=0.5",
            "Accept-Encoding": "gzip, deflate",
        }

    async def __aenter__(self) -> HttpClient:
        s = self.settings
        self.resolver = GuardedResolver(self.policy, timeout=s.connect_timeout)
        connector = aiohttp.TCPConnector(
            limit=0,  # the scheduler limits requests, globally and per host
            limit_per_host=0,
            ttl_dns_cache=None,  # one run: answers are kept (and checked) for its life
            resolver=self.resolver,
            ssl=self._tls,
            keepalive_timeout=_KEEPALIVE_SECONDS,
        )
        # When each request's headers went out: the start of its time to the response head.
        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(_headers_sent)
        self._session = aiohttp.ClientSession(
            connector=connector,
            trace_configs=[trace],
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=s.connect_timeout, sock_read=s.read_timeout
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
            trust_env=False,
        )
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def attempt(
        self,
        url: str,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        deadline: float,
        meter: ByteMeter | None = None,
        last_for_host: bool = False,
        allow_hop: Callable[[str], Awaitable[FetchResult | None]] | None = None,
        body: _BodyRules | None = None,
    ) -> FetchResult:
        """One try: follow up to max_redirects hops, each re-checked, all before ``deadline``.

        ``deadline`` is in the running loop's clock. ``meter`` counts body bytes as they arrive
        (left counted for a returned body; the caller releases them). ``last_for_host`` asks the
        server to close the connection after this response (nothing else to fetch there).
        ``allow_hop(url)``, for a redirect to another origin, returns the result that ends the
        attempt there instead (that origin's robots.txt forbids it), or None to go on. ``body``:
        what the body may be (an image's rules unless told otherwise).
        """
        try:
            url = check_url(url)
        except InvalidUrl as error:
            return FetchResult("invalid_url", error=str(error), final=True)
        body = body or _IMAGE_BODY
        headers = dict(self._headers)
        if body.accept:
            headers["Accept"] = body.accept
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        if last_for_host:
            headers["Connection"] = "close"
        state = _AttemptState()
        try:
            async with asyncio.timeout_at(deadline):
                result = await self._follow(url, headers, state, meter, body, allow_hop)
        except TimeoutError as error:
            # The deadline wins over whatever was going on; other timeouts are aiohttp's.
            result = _classify(
                error, state, deadline_hit=asyncio.get_running_loop().time() >= deadline
            )
        except BlockedAddress as error:
            result = FetchResult("blocked", error=str(error), final=True)
        except InvalidUrl as error:
            result = FetchResult("invalid_url", error=str(error), final=True)
        except Exception as error:  # noqa: BLE001 - every failure becomes a status row
            result = _classify(error, state, deadline_hit=False)
        if meter is not None and state.metered:
            meter.release(state.metered)  # bytes of a body we did not keep (cut, over the cap)
        result.final_url = result.final_url or state.url
        result.answered = state.answered
        result.head_seconds = state.head_seconds
        return result

    async def _follow(self, url, headers, state, meter, body, allow_hop) -> FetchResult:
        current = url
        result = None
        for hop in range(self.settings.max_redirects + 1):
            state.url = current
            if hop and allow_hop is not None:
                refused = await allow_hop(current)
                if refused is not None:
                    refused.final_url = current
                    return refused
            result, location = await self._hop(current, headers, state, meter, body)
            if location is None:
                result.final_url = current
                result.answered = state.answered
                return result
            try:
                current = check_url(urljoin(current, location))
            except InvalidUrl as error:
                return FetchResult(
                    "invalid_url", error=f"redirect: {error}", final_url=current, final=True
                )
        return FetchResult(
            "http_error",
            http_status=result.http_status if result else None,
            error=f"more than {self.settings.max_redirects} redirects",
            final_url=current,
            answered=state.answered,
        )

    async def fetch_robots(self, url: str, *, deadline: float) -> FetchResult:
        """One try at a robots.txt: redirects followed, the body cut at its 500 KiB cap."""
        return await self.attempt(url, deadline=deadline, body=_ROBOTS_BODY)

    async def _hop(self, url, headers, state, meter, rules) -> tuple[FetchResult, str | None]:
        s = self.settings
        max_bytes = rules.max_bytes or s.max_bytes
        check_literal(urlsplit(url).hostname or "", self.policy)
        assert self._session is not None, "use HttpClient as an async context manager"
        state.sent_at = None
        async with self._session.get(
            URL(url),
            headers=headers,
            allow_redirects=False,
            max_redirects=0,
            trace_request_ctx=state,
        ) as response:
            state.answered = True
            if state.sent_at is not None:
                state.head_seconds = asyncio.get_running_loop().time() - state.sent_at
            status = response.status
            head = response.headers
            etag = head.get("ETag")
            last_modified = head.get("Last-Modified")
            if status in REDIRECT_STATUSES:
                location = head.get("Location")
                await _discard(response)
                if not location:
                    return FetchResult("http_error", status, "redirect without Location"), None
                return FetchResult(None, status), location
            if status == 304:
                await _discard(response)
                return FetchResult(
                    "not_modified", 304, etag=etag, last_modified=last_modified
                ), None
            if status == 429:
                await _discard(response)
                result = FetchResult("rate_limited", 429, "HTTP 429")
                result.retry_after = parse_retry_after(head.get("Retry-After"))
                return result, None
            if not 200 <= status < 300:
                await _discard(response)
                result = FetchResult("http_error", status, f"HTTP {status}")
                if status >= 500:
                    result.retry_after = parse_retry_after(head.get("Retry-After"))
                return result, None
            if rules.images and s.respect_opt_out and opted_out(head.getall("X-Robots-Tag", [])):
                await _discard(response)
                return FetchResult("opted_out", status, "X-Robots-Tag opts out of AI use"), None
            length = head.get("Content-Length")
            if (
                not rules.truncate
                and length is not None
                and length.strip().isdigit()
                and int(length) > max_bytes
            ):
                response.close()
                return FetchResult("too_large", status, f"Content-Length {length} over cap"), None
            chunks: list[bytes] = []
            received = 0
            async for data in response.content.iter_any():
                received += len(data)
                if received > max_bytes:
                    response.close()
                    if rules.truncate:  # keep what the cap allows (robots.txt)
                        chunks.append(data[: len(data) - (received - max_bytes)])
                        break
                    return FetchResult("too_large", status, f"body over {max_bytes} bytes"), None
                if meter is not None:
                    meter.add(len(data))
                    state.metered += len(data)
                chunks.append(data)
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if meter is not None:
                meter.observe(len(body))
            state.metered = 0  # the caller owns the body's bytes now
            result = FetchResult(None, status, body=body, etag=etag, last_modified=last_modified)
            return result, None


@dataclass(frozen=True)
class _BodyRules:
    """What a body may be: its cap (0: the settings' max_bytes), cut or refused past it."""

    max_bytes: int = 0
    truncate: bool = False
    images: bool = True  # X-Robots-Tag opt-outs apply
    accept: str | None = None


_IMAGE_BODY = _BodyRules()
_ROBOTS_BODY = _BodyRules(
    max_bytes=500 * 1024, truncate=True, images=False, accept="text/plain, */*;q=0.5"
)


class _AttemptState:
    __slots__ = ("answered", "url", "metered", "sent_at", "head_seconds")

    def __init__(self) -> None:
        self.answered = False
        self.url: str | None = None
        self.metered = 0
        self.sent_at: float | None = None
        self.head_seconds: float | None = None


async def _headers_sent(session, context, params) -> None:
    state = context.trace_request_ctx
    if isinstance(state, _AttemptState):
        state.sent_at = asyncio.get_running_loop().time()


def retry_delay(
    settings: DownloadSettings,
    result: FetchResult,
    attempt: int,
    time_left: float,
    host_answered: bool,
) -> float | None:
    """Seconds to wait before trying this image again, or None to stop here.

    Stops on a final outcome, after max_attempts, on a timeout from a host that has never
    answered this run, and when the wait (a Retry-After, noted in ``result.error``) would run
    past the image's deadline.
    """
    if not result.retryable or attempt >= settings.max_attempts:
        return None
    if result.outcome == "timeout" and not host_answered:
        return None
    wait = min(settings.backoff_max, settings.backoff_base * 2 ** (attempt - 1))
    wait *= random.uniform(0.5, 1.0)
    if result.retry_after is not None:
        wait = result.retry_after + random.uniform(0.0, 0.1)
        if wait >= time_left:
            outlasts = f"Retry-After {result.retry_after:.0f}s outlasts the deadline"
            result.error = f"{result.error}: {outlasts}"
            return None
    if wait >= time_left:
        return None
    return wait


async def _discard(response: aiohttp.ClientResponse) -> None:
    """Drop a body we do not want, keeping the connection when that is cheap."""
    length = response.content_length
    try:
        if length is not None and length <= _DRAIN_LIMIT:
            await response.read()
        else:
            response.close()
    except Exception:  # noqa: BLE001
        response.close()


def _classify(error: BaseException, state: _AttemptState, *, deadline_hit: bool) -> FetchResult:
    """Map a client exception to an outcome, and say whether it speaks for the whole host."""
    text = f"{type(error).__name__}: {error}"[:500]
    silent = not state.answered  # nothing came back from the host in this attempt
    if deadline_hit:
        return FetchResult("timeout", error="total deadline passed")
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return FetchResult("timeout", error=f"connect timed out: {text}", host_failure="timeout")
    if isinstance(error, TimeoutError):  # SocketTimeoutError: silence past read_timeout
        what = "no response" if silent else "read timed out"
        return FetchResult(
            "timeout", error=f"{what}: {text}", host_failure="timeout" if silent else None
        )
    if isinstance(error, aiohttp.InvalidURL):
        return FetchResult("invalid_url", error=text, final=True)
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        if getattr(error.os_error, "errno", None) == socket.EAI_AGAIN:  # SERVFAIL, no answer
            return FetchResult("connection_error", error=text, host_failure="dns_failure")
        return FetchResult("connection_error", error=text, final=True, host_failure="dns")
    if isinstance(
        error,
        (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError, ssl.SSLError),
    ):
        return FetchResult("connection_error", error=text, final=True, host_failure="tls")
    if isinstance(error, aiohttp.ClientConnectorError):
        return FetchResult("connection_error", error=text, host_failure="refused")
    if isinstance(error, aiohttp.ClientPayloadError) and "ContentEncodingError" in repr(
        error.__cause__ or error
    ):
        return FetchResult("corrupt", error=f"content-encoding: {text}")
    if isinstance(error, aiohttp.ServerDisconnectedError) and silent:
        return FetchResult("connection_error", error=text, host_failure="refused")
    # Payload errors, resets and anything else unexpected.
    return FetchResult("connection_error", error=text)
