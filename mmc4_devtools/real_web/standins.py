"""Stand-ins on the realistic web (``RealWebConfig.standins``, off by default): the images that
are not what the page showed (issue 24), each with the outcome a correct downloader records.

- ``standin``: a few sites (``STANDIN_SITES`` hosts with 20-60 images each) answer a share of
  their image URLs with one "image removed" picture, the same body for every such URL of the
  site (a decodable PNG or JPEG, 160x80), spread over at least 3 documents: ``placeholder``.
- ``hotlink``: one more site answers some URLs with one "no hotlinking" picture (300x150 JPEG),
  as hotlink protection does: ``placeholder``.
- ``removed``: ``i.imgur.com`` and ``i.stack.imgur.com`` (two hosts renamed, site imgur.com;
  names mode only) answer a share of their URLs with a 302 to ``i.imgur.com``'s
  ``/removed.png`` (161x81, as imgur does): ``placeholder``, by the known stand-in URL.
- ``pixel`` and ``spacer``: 1x1 tracking GIFs and 200x1 transparent spacer GIFs on ordinary
  hosts, one body everywhere: ``too_small``.

And the real photos a stand-in rule must leave alone (``ok``): ``Plan.reuses`` (one URL used by
several documents: extra refs of the same URL, each in a document of its own) and
``Plan.same_body`` (an image of another site serving byte for byte the body of an ok image:
syndication). Documents: the benchmark's refs put image ``i`` in document ``i // DOC_IMAGES``;
each stand-in site's stand-in URLs are chosen to span at least ``MIN_DOCS`` of them.

Everything is drawn from its own generator, after the rest of the plan, so the plan without
stand-ins is the plan as it was.
"""

from __future__ import annotations

import io
import random
from collections import Counter
from dataclasses import replace
from functools import lru_cache

from PIL import Image, ImageDraw

from mmc4_devtools.real_web.sites import CDN_NAMES

# kind -> the outcome a correct downloader records
STANDIN_KINDS = {
    "standin": "placeholder",
    "hotlink": "placeholder",
    "removed": "placeholder",
    "pixel": "too_small",
    "spacer": "too_small",
}
STANDIN_SITES = 5  # sites serving an "image removed" picture
STANDIN_SHARE = 0.3  # of a stand-in site's (and imgur's) servable images
MIN_STANDINS = 6  # per site: over the detection's 5 URLs
DOC_IMAGES = 5  # the benchmark's documents: image i is in document i // DOC_IMAGES
MIN_DOCS = 4  # documents each site's stand-in URLs span (the detection needs 3)
TINY = 40  # tracking pixels and spacers, on ordinary hosts
REUSED = 12  # ok images whose URL other documents use too
REUSES_EACH = 2  # extra documents per reused URL
COPIES = 12  # ok images whose body another site serves too
IMGUR_NAMES = ("i.imgur.com", "i.stack.imgur.com")
REMOVED_HOST, REMOVED_PATH = IMGUR_NAMES[0], "/removed.png"


def is_standin(fault: str | None) -> bool:
    return fault in STANDIN_KINDS


def add_standins(config, hosts: list, images: list) -> tuple[list, list, tuple, dict]:
    """(hosts, images, reuses, same_body) with the stand-ins put in.

    Only images a correct downloader would record ``ok`` (no fault, open to us) become stand-ins,
    copies or reused URLs; hosts renamed to imgur's keep their fate (live, name resolves, not a
    5xx robots.txt), the names become ``i.imgur.com`` / ``i.stack.imgur.com`` over HTTPS.
    """
    rng = random.Random(f"{config.seed}:standins")
    hosts, images = list(hosts), list(images)
    clean = [i for i in images if i.expect == "ok" and i.fault is None]
    by_host: dict[int, list] = {}
    for image in clean:
        by_host.setdefault(image.host, []).append(image)
    per_host = Counter(i.host for i in images)
    fit = [
        h.index
        for h in hosts
        if h.kind == "live" and h.dns == "ok" and h.robots != "5xx" and h.name not in CDN_NAMES
    ]
    mid = [i for i in fit if 20 <= per_host[i] <= 60 and len(by_host.get(i, ())) >= 12]
    rest = sorted(
        (i for i in fit if i not in mid and len(by_host.get(i, ())) >= MIN_STANDINS),
        key=lambda i: -per_host[i],
    )
    wanted = STANDIN_SITES + 1 + (len(IMGUR_NAMES) if config.names else 0)
    chosen = rng.sample(mid, min(wanted, len(mid)))
    chosen += rest[: wanted - len(chosen)]
    if len(chosen) < wanted:
        raise ValueError("too few hosts with enough images for the stand-ins")
    kinds = ["standin"] * STANDIN_SITES + ["hotlink"]
    kinds += ["removed"] * (len(chosen) - len(kinds))
    imgur = iter(IMGUR_NAMES)
    for host, kind in zip(chosen, kinds, strict=True):
        if kind == "removed":
            name = next(imgur)
            hosts[host] = replace(hosts[host], name=name, site="imgur.com", scheme="https")
        for image in _spanning(rng, by_host[host]):
            images[image.index] = _as_standin(image, kind)
    taken = set(chosen)
    left = [i for i in clean if i.host not in taken]
    rng.shuffle(left)
    for image in left[:TINY]:
        kind = "pixel" if image.index % 3 else "spacer"
        path = f"/t/{image.index:06d}.gif" if kind == "pixel" else f"/s/{image.index:06d}.gif"
        images[image.index] = replace(image, fault=kind, expect=STANDIN_KINDS[kind], path=path)
    reused = left[TINY : TINY + REUSED]
    reuses = tuple((image.index, k) for image in reused for k in range(REUSES_EACH))
    same_body = _copies(rng, hosts, images, left[TINY + REUSED :], taken)
    return hosts, images, reuses, same_body


def _spanning(rng: random.Random, servable: list) -> list:
    """A share of a host's servable images, at least MIN_STANDINS, over MIN_DOCS documents."""
    count = min(len(servable), max(MIN_STANDINS, round(STANDIN_SHARE * len(servable))))
    picked = rng.sample(servable, count)
    docs = {i.index // DOC_IMAGES for i in picked}
    for image in servable:  # the benchmark's documents: enough of them, by construction
        if len(docs) >= MIN_DOCS:
            break
        if image.index // DOC_IMAGES not in docs:
            picked.append(image)
            docs.add(image.index // DOC_IMAGES)
    return picked


def _as_standin(image, kind: str):
    return replace(image, fault=kind, expect=STANDIN_KINDS[kind])


def _copies(rng: random.Random, hosts: list, images: list, pool: list, taken: set) -> dict:
    """image -> the image whose body it serves: an ok image of another site, same picture."""
    same_body: dict[int, int] = {}
    originals, spare = pool[:COPIES], pool[COPIES:]
    for original in originals:
        site = hosts[original.host].site
        copy = next((i for i in spare if hosts[i.host].site != site), None)
        if copy is None:
            break
        spare.remove(copy)
        ext = original.path.rsplit(".", 1)[1]
        path = copy.path.rsplit(".", 1)[0] + "." + ext
        images[copy.index] = replace(copy, pool=original.pool, path=path)
        same_body[copy.index] = original.index
    return same_body


# --------------------------------------------------------------------------- bodies


def _picture(text: str, size: tuple[int, int], seed: int, fmt: str) -> bytes:
    rng = random.Random(seed)
    back = tuple(rng.randrange(180, 240) for _ in range(3))
    picture = Image.new("RGB", size, back)
    draw = ImageDraw.Draw(picture)
    draw.rectangle((2, 2, size[0] - 3, size[1] - 3), outline=(90, 90, 90), width=2)
    draw.text((10, size[1] // 2 - 6), text, fill=(60, 60, 60))
    out = io.BytesIO()
    picture.save(out, "PNG" if fmt == "png" else "JPEG", quality=80)
    return out.getvalue()


@lru_cache(maxsize=64)
def standin_body(kind: str, site: str) -> tuple[bytes, str]:
    """(body, content type) a stand-in URL of ``site`` is answered with (not ``removed``)."""
    seed = sum(site.encode())
    if kind == "standin":
        fmt = "png" if seed % 2 else "jpeg"
        return _picture("image removed", (160, 80), seed, fmt), f"image/{fmt}"
    if kind == "hotlink":
        return _picture("no hotlinking, please", (300, 150), seed, "jpeg"), "image/jpeg"
    if kind == "pixel":
        return _gif((1, 1), transparent=False), "image/gif"
    if kind == "spacer":
        return _gif((200, 1), transparent=True), "image/gif"
    if kind == "removed":  # what /removed.png itself is
        return _picture("removed", (161, 81), 24, "png"), "image/png"
    raise AssertionError(f"unknown stand-in {kind}")


def _gif(size: tuple[int, int], *, transparent: bool) -> bytes:
    out = io.BytesIO()
    picture = Image.new("P", size, 0)
    picture.putpalette([255, 255, 255, 0, 0, 0])
    if transparent:
        picture.save(out, "GIF", transparency=0)
    else:
        picture.save(out, "GIF")
    return out.getvalue()
