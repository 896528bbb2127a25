"""Host names, sites and robots.txt files of the realistic benchmark web (``real_web``).

Why: politeness on the real web is per site (a registrable domain: ``i0.wp.com`` and
``i3.wp.com`` are one site, ``d1.cloudfront.net`` and ``d2.cloudfront.net`` are two, because
cloudfront.net sits in the Public Suffix List's private section), and robots.txt is per host.
The web must name its hosts the way the real web does, know each host's site exactly as an
engine using the ``publicsuffixlist`` package computes it, and know for every image whether an
RFC 9309 crawler with product token ``mmc4-assets`` may fetch it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

PRODUCT_TOKEN = "mmc4-assets"

# The heaviest hosts: CDNs answering under several names of one site. (names, certificate name)
CDN_GROUPS: tuple[tuple[tuple[str, ...], str], ...] = (
    (tuple(f"i{k}.wp.com" for k in range(4)), "*.wp.com"),
    (tuple(f"lh{k}.googleusercontent.com" for k in range(3, 7)), "*.googleusercontent.com"),
    (tuple(f"{k}.bp.blogspot.com" for k in range(1, 5)), "*.bp.blogspot.com"),
)
CDN_NAMES = frozenset(name for group, _ in CDN_GROUPS for name in group)
# The long tail: kind -> weight. wordpress: one site (wordpress.com) behind many names;
# cloudfront, blogspot, s3: one site per name (private PSL suffixes); pair: www. and img. of
# one site; plain: one host per site.
TAIL_KINDS = {"wordpress": 3, "cloudfront": 2, "blogspot": 1, "s3": 1, "pair": 6, "plain": 87}
TLDS = {
    "com": 55, "org": 7, "net": 6, "de": 5, "co.uk": 4, "ru": 3, "fr": 2, "com.au": 2, "ca": 2,
    "nl": 2, "jp": 2, "com.br": 2, "info": 2, "io": 1, "es": 1, "it": 1, "pl": 1, "in": 1, "co": 1,
}  # fmt: skip
_SYLLABLES = "ka lo mi ne ra su to vi ze ban cor del fin gor hal jun kel mar nor pel tur".split()


def host_names(rng: random.Random, count: int) -> list[str]:
    """``count`` distinct names, index 0 the heaviest host: CDN groups first, then the tail."""
    names: list[str] = []
    for group, _ in CDN_GROUPS:
        if len(names) + len(group) <= count // 3:
            names.extend(group)
    open_pair: str | None = None
    kinds, weights = list(TAIL_KINDS), list(TAIL_KINDS.values())
    tlds, tld_weights = list(TLDS), list(TLDS.values())
    while len(names) < count:
        index = len(names)
        word = "".join(rng.choices(_SYLLABLES, k=rng.randint(2, 3))) + str(index)
        kind = rng.choices(kinds, weights)[0]
        if kind == "pair" and open_pair:
            names.append(f"img.{open_pair}")
            open_pair = None
            continue
        tld = rng.choices(tlds, tld_weights)[0]
        if kind == "wordpress":
            names.append(f"{word}.files.wordpress.com")
        elif kind == "cloudfront":
            names.append(f"d{rng.getrandbits(56):014x}.cloudfront.net")
        elif kind == "blogspot":
            names.append(f"{word}.blogspot.com")
        elif kind == "s3":
            names.append(f"{word}.s3.amazonaws.com")
        elif kind == "pair":
            open_pair = f"{word}.{tld}"
            names.append(f"www.{open_pair}")
        else:
            names.append(f"www.{word}.{tld}" if rng.random() < 0.6 else f"{word}.{tld}")
    return names


@lru_cache(maxsize=1)
def _psl():
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


def site_of(name: str) -> str:
    """The registrable domain per the Public Suffix List; unknown TLDs: the last two labels.

    IP literals are their own site.
    """
    if name.replace(".", "").isdigit() or ":" in name:
        return name
    return _psl().privatesuffix(name.lower()) or ".".join(name.lower().split(".")[-2:])


def certificate_name(name: str) -> str:
    """The name a host's certificate carries: a wildcard for the names of a multi-host CDN."""
    for group, wildcard in CDN_GROUPS:
        if name in group:
            return wildcard
    if name.endswith(".files.wordpress.com"):
        return "*.files.wordpress.com"
    return name


# --------------------------------------------------------------------------- robots.txt


@dataclass(frozen=True)
class RobotsFile:
    """One robots.txt and what it means for ``mmc4-assets`` (the plan places images by it).

    ``disallowed``: a folder images may be put under that we must not fetch ("/": the whole
    host). ``allowed``: a folder another group disallows but we may fetch (a trap for a parser
    that applies the wrong group or the shorter rule).
    """

    text: str
    disallowed: str | None = None
    allowed: str | None = None
    crawl_delay: float | None = None
    weight: float = 1.0


ROBOTS_FILES: tuple[RobotsFile, ...] = (
    RobotsFile(
        "User-agent: *\nDisallow: /wp-admin/\nAllow: /wp-admin/admin-ajax.php\n\n"
        "Sitemap: https://example.com/sitemap.xml\n",
        weight=30,
    ),
    RobotsFile(
        "User-agent: *\nDisallow: /cgi-bin/\nDisallow: /search\nCrawl-delay: 1\n",
        crawl_delay=1.0,
        weight=10,
    ),  # fmt: skip
    RobotsFile("User-agent: *\nDisallow: /private/\n", disallowed="/private/", weight=12),
    RobotsFile(
        "User-agent: GPTBot\nDisallow: /\n\nUser-agent: CCBot\nDisallow: /\n\n"
        "User-agent: *\nDisallow: /tmp/\n",
        weight=12,
    ),
    RobotsFile(  # our own group wins over "*": only /media/ is closed to us
        "User-agent: mmc4-assets\nDisallow: /media/\n\nUser-agent: *\nDisallow: /\n",
        disallowed="/media/",
        weight=6,
    ),
    RobotsFile(
        "User-agent: *\nDisallow: /photos/\n\nUser-agent: mmc4-assets\nAllow: /\n",
        allowed="/photos/",
        weight=6,
    ),
    RobotsFile(  # the longest match wins
        "User-agent: *\nDisallow: /uploads/\nAllow: /uploads/public/\n",
        disallowed="/uploads/",
        allowed="/uploads/public/",
        weight=8,
    ),
    RobotsFile(
        "User-agent: *\nDisallow: /*/private/\nCrawl-delay: 2\n",
        disallowed="/img/private/",
        crawl_delay=2.0,
        weight=6,
    ),
    RobotsFile(
        "User-agent: Googlebot\nAllow: /\n\nUser-agent: *\nDisallow: /\n", disallowed="/", weight=3
    ),  # fmt: skip
    RobotsFile(
        "# tokens match case-insensitively\nUser-agent: MMC4-Assets\nDisallow: /gallery/\n",
        disallowed="/gallery/",
        weight=4,
    ),  # fmt: skip
    RobotsFile(
        "# comments and blank lines\n\nUser-agent: *   # everyone\nDisallow: /admin  # no\n",
        weight=3,
    ),  # fmt: skip
)
ROBOTS_HTML = (
    b"<!DOCTYPE html><html><head><title>Welcome</title></head>"
    b"<body><p>Page not found, but here is our home page.</p></body></html>"
)
