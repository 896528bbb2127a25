"""URL and header rules: what we request, whom we count it against, what we honour."""

from __future__ import annotations

import email.utils
import re
import time
from datetime import UTC
from urllib.parse import urlsplit

_OPT_OUT_TOKENS = frozenset({"noai", "noimageai"})


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
    """The lower-cased host name of ``url`` ("" when it has none); per-host limits' key."""
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
