"""The HTTP client against real servers on 127.0.0.1: faults, limits, retries, policy."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from email.utils import formatdate

import pytest

from mmc4_assets.downloader import DownloadSettings
from mmc4_assets.downloader.fetching.client import (
    ByteMeter,
    FetchResult,
    HttpClient,
    retry_delay,
)
from mmc4_assets.downloader.fetching.urls import InvalidUrl, check_url, opted_out, parse_retry_after
from mmc4_assets_tests.support.local_server import hang_up, image_bytes, refusing_url, send

FAST = dict(
    allow_private_networks=True,
    connect_timeout=1.0,
    read_timeout=1.0,
    total_deadline=3.0,
    backoff_base=0.05,
    backoff_max=0.2,
    max_attempts=3,
)


async def fetch_with_retries(
    client: HttpClient, url: str, *, etag: str | None = None, last_modified: str | None = None
) -> FetchResult:
    """One URL, tried until it ends: the product's attempt and retry_delay, the retries waited in
    place (the shard run requeues the image instead), under the image's total deadline."""
    try:
        url = check_url(url)
    except InvalidUrl as error:
        return FetchResult("invalid_url", error=str(error), attempts=0)
    settings = client.settings
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.total_deadline
    attempt = 0
    answered = False
    while True:
        attempt += 1
        result = await client.attempt(
            url, etag=etag, last_modified=last_modified, deadline=deadline
        )
        result.attempts = attempt
        answered = answered or result.answered
        wait = retry_delay(settings, result, attempt, deadline - loop.time(), answered)
        if wait is None:
            return result
        await asyncio.sleep(wait)


class Fetcher:
    """Runs fetch_with_retries for one URL at a time, from sync tests."""

    def __init__(self, settings: DownloadSettings) -> None:
        self.settings = settings

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def fetch(self, url: str, **conditional) -> FetchResult:
        async def run() -> FetchResult:
            async with HttpClient(self.settings) as client:
                return await fetch_with_retries(client, url, **conditional)

        return asyncio.run(run())


def fetcher(**overrides) -> Fetcher:
    return Fetcher(DownloadSettings(**{**FAST, **overrides}))


JPEG = image_bytes(64, 48)

# --------------------------------------------------------------------------- tests


def test_ok_body_and_validators_and_headers(server):
    s = server({"/a.jpg": lambda h: send(h, 200, JPEG, headers={"ETag": '"v1"'})})
    with fetcher(user_agent="mmc4-assets/0.1 (+test)") as f:
        result = f.fetch(s.url("/a.jpg"))
    assert result.outcome is None and result.body == JPEG and result.etag == '"v1"'
    headers = s.requests[0][2]
    assert headers["User-Agent"] == "mmc4-assets/0.1 (+test)"
    assert "X-Forwarded-For" not in headers and "Googlebot" not in headers["User-Agent"]


def test_404_is_final(server):
    s = server({})
    with fetcher() as f:
        result = f.fetch(s.url("/missing.jpg"))
    assert (result.outcome, result.http_status, result.attempts) == ("http_error", 404, 1)
    assert s.fetches() == 1


def test_500_is_retried_then_http_error(server):
    s = server({"/e": lambda h: send(h, 500, b"boom", "text/plain")})
    with fetcher() as f:
        result = f.fetch(s.url("/e"))
    assert (result.outcome, result.http_status, result.attempts) == ("http_error", 500, 3)
    assert s.count("/e") == 3


def test_429_retry_after_is_honoured(server):
    calls = []

    def limited(h):
        calls.append(1)
        if len(calls) == 1:
            send(h, 429, b"slow down", "text/plain", {"Retry-After": "1"})
        else:
            send(h, 200, JPEG)

    s = server({"/r": limited})
    with fetcher(total_deadline=5.0) as f:
        result = f.fetch(s.url("/r"))
    assert result.outcome is None and result.attempts == 2
    first, second = s.times("/r")
    assert second - first >= 0.95


def test_429_retry_after_over_cap_gives_up(server):
    s = server({"/r": lambda h: send(h, 429, b"", "text/plain", {"Retry-After": "120"})})
    with fetcher(retry_after_cap=2.0) as f:
        result = f.fetch(s.url("/r"))
    assert result.outcome == "rate_limited" and result.attempts == 1


def test_retry_after_formats():
    assert parse_retry_after("3") == 3.0
    now = time.time()
    assert 9 <= parse_retry_after(formatdate(now + 10, usegmt=True), now=now) <= 10.5
    assert parse_retry_after("garbage") is None and parse_retry_after(None) is None


@pytest.mark.timeout(60)  # a hang guard: without the deadline the read timeout ends it at 30 s
def test_stall_before_headers_times_out_within_deadline(server):
    release = threading.Event()
    s = server({"/stall": lambda h: release.wait(120)})
    try:
        # The read timeout is far off: only the image's total deadline can end this fetch.
        with fetcher(read_timeout=30.0, total_deadline=1.0, max_attempts=3) as f:
            result = f.fetch(s.url("/stall"))
    finally:
        release.set()
    assert (result.outcome, result.attempts) == ("timeout", 1)
    assert result.error == "total deadline passed"
    assert s.count("/stall") == 1


@pytest.mark.timeout(60)  # a hang guard: the trickle alone lasts over a minute
def test_trickle_is_cut_by_total_deadline(server):
    def trickle(h):
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Content-Length", str(len(JPEG)))
        h.end_headers()
        for byte in JPEG:
            h.wfile.write(bytes([byte]))
            h.wfile.flush()
            time.sleep(0.1)

    s = server({"/drip": trickle})
    # Each byte comes well within the read timeout, and the whole body would take over a minute:
    # only the image's total deadline can end this fetch.
    with fetcher(read_timeout=0.5, total_deadline=1.0) as f:
        result = f.fetch(s.url("/drip"))
    assert (result.outcome, result.attempts) == ("timeout", 1)
    assert result.error == "total deadline passed"
    assert result.body is None and s.count("/drip") == 1


def test_connection_closed_mid_body_is_connection_error(server):
    def midclose(h):
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Content-Length", str(len(JPEG)))
        h.end_headers()
        h.wfile.write(JPEG[: len(JPEG) // 2])
        hang_up(h)

    s = server({"/mid": midclose})
    with fetcher() as f:
        result = f.fetch(s.url("/mid"))
    assert result.outcome == "connection_error" and result.attempts == 3


def test_oversized_with_content_length_rejected_early(server):
    big = b"\xff" * 200_000
    s = server({"/big": lambda h: send(h, 200, big)})
    with fetcher(max_bytes=50_000) as f:
        result = f.fetch(s.url("/big"))
    assert result.outcome == "too_large" and result.attempts == 1


def test_oversized_without_content_length(server):
    def endless(h):
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Connection", "close")
        h.end_headers()
        for _ in range(100):
            h.wfile.write(b"\x00" * 10_000)
        h.close_connection = True

    s = server({"/nolen": endless})
    with fetcher(max_bytes=50_000) as f:
        result = f.fetch(s.url("/nolen"))
    assert result.outcome == "too_large"


def test_gzip_bomb_capped_on_decoded_bytes(server):
    packed = gzip.compress(b"\x00" * 2_000_000)
    s = server({"/gz": lambda h: send(h, 200, packed, headers={"Content-Encoding": "gzip"})})
    with fetcher(max_bytes=100_000) as f:
        result = f.fetch(s.url("/gz"))
    assert result.outcome == "too_large"


def test_gzip_content_encoding_is_decoded(server):
    s = server(
        {"/gz": lambda h: send(h, 200, gzip.compress(JPEG), headers={"Content-Encoding": "gzip"})}
    )
    with fetcher() as f:
        result = f.fetch(s.url("/gz"))
    assert result.outcome is None and result.body == JPEG
    assert "gzip" in s.requests[0][2]["Accept-Encoding"]


def redirect_to(location: str):
    return lambda h: send(h, 302, b"", "text/plain", {"Location": location})


def test_redirect_chain_followed_and_limited(server):
    s = server(
        {
            "/r1": redirect_to("/r2"),
            "/r2": redirect_to("/r3"),
            "/r3": lambda h: send(h, 200, JPEG),
            "/loop": redirect_to("/loop"),
        }
    )
    with fetcher(max_redirects=3) as f:
        ok = f.fetch(s.url("/r1"))
        looped = f.fetch(s.url("/loop"))
    assert ok.outcome is None and ok.final_url.endswith("/r3")
    assert looped.outcome == "http_error" and "redirects" in looped.error
    assert s.count("/loop") == 4  # the first request plus max_redirects hops
    assert looped.attempts == 1


def test_redirect_to_other_scheme_is_invalid(server):
    s = server({"/r": redirect_to("file:///etc/passwd")})
    with fetcher() as f:
        assert f.fetch(s.url("/r")).outcome == "invalid_url"


def test_robots_opt_out(server):
    s = server(
        {
            "/a": lambda h: send(h, 200, JPEG, headers={"X-Robots-Tag": "noai"}),
            "/b": lambda h: send(h, 200, JPEG, headers={"X-Robots-Tag": "otherbot: NoImageAI"}),
            "/c": lambda h: send(h, 200, JPEG, headers={"X-Robots-Tag": "noindex"}),
        }
    )
    with fetcher() as f:
        assert f.fetch(s.url("/a")).outcome == "opted_out"
        assert f.fetch(s.url("/b")).outcome == "opted_out"
        assert f.fetch(s.url("/c")).outcome is None
    with fetcher(respect_opt_out=False) as f:
        assert f.fetch(s.url("/a")).outcome is None
    assert opted_out(["noindex, noai"]) and not opted_out(["nofollow"])


def test_conditional_request_and_304(server):
    def conditional(h):
        if h.headers.get("If-None-Match") == '"v1"':
            h.send_response(304)
            h.send_header("ETag", '"v1"')
            h.send_header("Content-Length", "0")
            h.end_headers()
        else:
            send(h, 200, JPEG, headers={"ETag": '"v1"'})

    s = server({"/c": conditional})
    with fetcher() as f:
        result = f.fetch(s.url("/c"), etag='"v1"', last_modified="Wed, 21 Oct 2015 07:28:00 GMT")
    assert result.outcome == "not_modified" and result.http_status == 304
    assert s.requests[0][2]["If-Modified-Since"] == "Wed, 21 Oct 2015 07:28:00 GMT"


def test_private_address_blocked_before_any_request(server):
    s = server({"/a": lambda h: send(h, 200, JPEG)})
    with fetcher(allow_private_networks=False) as f:
        for url in (s.url("/a"), f"http://localhost:{s.port}/a", "http://[::1]/a"):
            result = f.fetch(url)
            assert result.outcome == "blocked", url
            assert result.attempts == 1
    assert s.fetches() == 0


def test_redirect_to_private_address_blocked(server):
    inner = server({"/secret": lambda h: send(h, 200, JPEG)}, host="127.0.0.2")
    outer = server(
        {
            "/to-inner": redirect_to(inner.url("/secret")),
            "/to-metadata": redirect_to("http://169.254.169.254/latest/meta-data"),
        }
    )
    # Only 127.0.0.1 is let through: it stands in for a public host.
    with fetcher(allow_private_networks=False, allowed_networks=("127.0.0.1/32",)) as f:
        assert f.fetch(outer.url("/to-inner")).outcome == "blocked"
        assert f.fetch(outer.url("/to-metadata")).outcome == "blocked"
    assert inner.fetches() == 0 and outer.fetches() == 2


@pytest.mark.parametrize(
    "url",
    [
        "",
        "   ",
        "ftp://example.com/a.jpg",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "http://",
        "not a url",
        "http://exa mple.com:99999/x",
        "data:image/png;base64,AAAA",
        "http://example.com/\x00.jpg",
    ],
)
def test_invalid_urls(url):
    with fetcher() as f:
        result = f.fetch(url)
    assert result.outcome == "invalid_url" and result.attempts == 0


def test_check_url_accepts_normal_urls():
    assert check_url(" https://example.com/a b.jpg ") == "https://example.com/a b.jpg"


def test_never_answering_host_times_out_once(silent_server):
    silent = silent_server()
    with fetcher(read_timeout=0.3, total_deadline=3.0) as f:
        result = f.fetch(silent.url("/a.jpg"))
    # A host that never answered is not retried (the stale-image sensor will), and says why.
    assert (result.outcome, result.attempts, result.host_failure) == ("timeout", 1, "timeout")
    assert result.error.startswith("no response") and silent.accepted == 1


def test_refused_connection_is_retried_and_counts_against_the_host():
    with fetcher() as f:
        result = f.fetch(refusing_url("127.0.0.1", "/a.jpg"))
    assert (result.outcome, result.attempts, result.host_failure) == (
        "connection_error",
        3,
        "refused",
    )


def test_bytes_of_bodies_not_kept_are_released(server):
    def endless(h):
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Connection", "close")
        h.end_headers()
        for _ in range(100):
            h.wfile.write(b"\x00" * 10_000)
        h.close_connection = True

    s = server({"/nolen": endless, "/ok.jpg": lambda h: send(h, 200, JPEG)})

    async def run() -> tuple[list[FetchResult], int, int]:
        meter = ByteMeter()
        async with HttpClient(DownloadSettings(**{**FAST, "max_bytes": 50_000})) as client:
            deadline = asyncio.get_running_loop().time() + 3
            over = await client.attempt(s.url("/nolen"), deadline=deadline, meter=meter)
            after_over = meter.held
            kept = await client.attempt(s.url("/ok.jpg"), deadline=deadline, meter=meter)
            return [over, kept], after_over, meter.held

    (over, kept), after_over, held = asyncio.run(run())
    assert over.outcome == "too_large" and after_over == 0
    assert kept.outcome is None and held == len(JPEG)  # a kept body stays counted until decoded
