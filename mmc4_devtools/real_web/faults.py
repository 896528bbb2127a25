"""The faults a host, a name, a robots.txt or an image can have, and the outcome a correct
downloader records for each."""

from __future__ import annotations

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
