"""The stand-in web (``RealWebConfig.standins``): off, the plan is the plan as it was; on, every
stand-in kind of issue 24 is there, shaped so the detection's rules can (and must) catch it, and
the real photos it must leave alone are there too. Pure plan checks."""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from datetime import UTC, datetime

import pytest
from PIL import Image

from mmc4_assets.corpus.status import normalize_status
from mmc4_assets.downloader.storing.standins import find_standins
from mmc4_devtools.real_web import RealWebConfig, make_plan
from mmc4_devtools.real_web.pool import served_body
from mmc4_devtools.real_web.standins import (
    DOC_IMAGES,
    IMGUR_NAMES,
    REMOVED_HOST,
    REMOVED_PATH,
    STANDIN_KINDS,
    standin_body,
)

ON = RealWebConfig(images=3_000, seed=3, standins=True)


def _digest(plan) -> str:
    state = (plan.hosts, plan.images, plan.pool_formats, plan.names, plan.throttled_sites)
    return hashlib.sha256(repr(state).encode()).hexdigest()


@pytest.mark.parametrize(
    ("config", "digest"),
    [  # computed on main before stand-ins existed: the default web must not move
        (RealWebConfig(), "40161f61f60de44d568858e8acb82da8c75388509df180ad3cf4321207b13125"),
        (
            RealWebConfig(images=3_000, seed=3),
            "88c95834a04f8c1666b5f8b6852e7edf6d67dde03f8fa1e5a9e74f75a83a1444",
        ),
        (
            RealWebConfig(images=600, names=False, seed=1),
            "c7323e4b01b6699edb16fa600b04d58b6d74dfd67b40339580ff1668a8cdce0f",
        ),
    ],
)
def test_without_standins_the_plan_is_unchanged(config, digest):
    plan = make_plan(config)
    assert not config.standins and _digest(plan) == digest
    assert plan.reuses == () and plan.same_body == {}
    assert "standins" not in plan.summary()


def test_with_standins_every_kind_is_planned_with_its_outcome():
    plan, base = make_plan(ON), make_plan(RealWebConfig(images=3_000, seed=3))
    assert make_plan(ON) == plan  # server and client agree
    kinds = Counter(i.fault for i in plan.images if i.fault in STANDIN_KINDS)
    assert set(kinds) == set(STANDIN_KINDS) and kinds["pixel"] + kinds["spacer"] == 40
    assert all(i.expect == STANDIN_KINDS[i.fault] for i in plan.images if i.fault in STANDIN_KINDS)
    changed = [i for i, b in zip(plan.images, base.images, strict=True) if i != b]
    # Only ok images of the default plan changed: into stand-ins, or copies of another's body.
    assert all(base.images[i.index].expect == "ok" for i in changed)
    standins = {i.index for i in plan.images if i.fault in STANDIN_KINDS}
    assert standins <= {i.index for i in changed} <= standins | set(plan.same_body)
    assert len(plan.hosts) == len(base.hosts)
    renamed = [h for h, b in zip(plan.hosts, base.hosts, strict=True) if h != b]
    assert sorted(h.name for h in renamed) == sorted(IMGUR_NAMES)
    assert {(h.site, h.scheme, h.kind, h.dns) for h in renamed} == {
        ("imgur.com", "https", "live", "ok")
    }


def test_each_standin_site_serves_one_body_under_enough_urls_and_documents():
    plan = make_plan(ON)
    by_site: dict[tuple[str, str], list] = {}
    for image in plan.images:
        if image.fault in ("standin", "hotlink", "removed"):
            by_site.setdefault((image.fault, plan.hosts[image.host].site), []).append(image)
    assert Counter(kind for kind, _ in by_site) == {"standin": 5, "hotlink": 1, "removed": 1}
    for (_, site), images in by_site.items():
        assert len({i.path for i in images}) >= 5
        assert len({i.index // DOC_IMAGES for i in images}) >= 3, site
        real = [i for i in plan.images if plan.hosts[i.host].site == site and i.expect == "ok"]
        assert real, site  # the site's other images are real photos
    bodies = {standin_body(kind, site)[0] for kind, site in by_site if kind != "removed"}
    assert len(bodies) == 6  # one stand-in per site


def test_standin_bodies_decode_to_their_sizes():
    for kind, size in [
        ("standin", (160, 80)),
        ("hotlink", (300, 150)),
        ("removed", (161, 81)),
        ("pixel", (1, 1)),
        ("spacer", (200, 1)),
    ]:
        body, ctype = standin_body(kind, "example.com")
        with Image.open(io.BytesIO(body)) as image:
            image.load()
            assert image.size == size and ctype == f"image/{image.format.lower()}"


def test_ip_mode_has_no_imgur():
    plan = make_plan(RealWebConfig(images=3_000, seed=3, names=False, standins=True))
    assert not any(i.fault == "removed" for i in plan.images)
    assert not any(h.name in IMGUR_NAMES for h in plan.hosts)


def test_reused_urls_and_copies_are_ok_photos():
    plan = make_plan(ON)
    reused = Counter(image for image, _ in plan.reuses)
    assert len(reused) == 12 and set(reused.values()) == {2}
    assert all(plan.images[i].expect == "ok" and plan.images[i].fault is None for i in reused)
    assert len(plan.same_body) == 12
    for copy, original in plan.same_body.items():
        a, b = plan.images[copy], plan.images[original]
        assert a.expect == b.expect == "ok" and a.pool == b.pool
        assert plan.hosts[a.host].site != plan.hosts[b.host].site
        assert plan.body_index(a) == original


def test_the_detection_flags_exactly_the_planned_standins():
    """The status rows a correct downloader would record for this web, marked by the product's
    rules: the stand-ins and tiny images are flagged, no real photo (reused URLs and copies on
    other sites included)."""
    plan = make_plan(ON)
    pool = [b"picture %d" % i for i in range(ON.pool_size)]
    rows, want = [], {}
    refs = [(i.index, i.index // DOC_IMAGES, i.index % DOC_IMAGES) for i in plan.images]
    next_doc = -(-len(plan.images) // DOC_IMAGES)
    refs += [(image, next_doc + n, 0) for n, (image, _) in enumerate(plan.reuses)]
    for number, (index, doc, slot) in enumerate(refs):
        image = plan.images[index]
        if image.expect not in ("ok", "placeholder", "too_small"):
            continue
        host = plan.hosts[image.host]
        url = f"https://{host.name}{image.path}"
        final, size = url, (500, 400)
        if image.fault == "removed":
            final = f"https://{REMOVED_HOST}{REMOVED_PATH}"
            body = standin_body("removed", "imgur.com")[0]
        elif image.fault in STANDIN_KINDS:
            body = standin_body(image.fault, host.site)[0]
            size = {"pixel": (1, 1), "spacer": (200, 1)}.get(image.fault, (160, 80))
        else:
            body = served_body(pool[image.pool], plan.body_index(image))
        rows.append(
            {"shard": 0, "doc": doc, "index": slot, "image_name": str(number), "outcome": "ok",
             "url": url, "final_url": final, "width": size[0], "height": size[1],
             "host": host.name, "fetched_at": datetime.now(UTC), "attempts": 1,
             "body_sha256": hashlib.sha256(body).hexdigest()}
        )  # fmt: skip
        want[len(rows) - 1] = image.expect
    table = normalize_status(rows)
    verdicts = find_standins(table)
    got = {label: verdicts[label].outcome if label in verdicts else "ok" for label in want}
    assert got == want
