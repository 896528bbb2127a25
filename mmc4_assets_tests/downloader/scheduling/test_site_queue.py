"""The site queue: each site within its limit, busiest sites first, due retries before all."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from mmc4_assets.downloader import ImageRef
from mmc4_assets.downloader.scheduling.site_queue import SiteQueue
from mmc4_assets.downloader.storing.store import ImageJob


def job(site: str, number: int, host: str | None = None) -> ImageJob:
    host = host or site
    ref = ImageRef(number, 0, f"{number}.jpg", f"http://{host}/{number}.jpg")
    made = ImageJob(number, ref, ref.image_name, Path(ref.image_name), ref.image_name, None, host)
    made.site = site
    return made


def test_busiest_site_first_within_its_limit():
    queue = SiteQueue(lambda site: 2)
    for number, site in enumerate(["small", "big", "big", "big", "mid", "mid"]):
        queue.add(job(site, number))
    taken = [queue.take().site for _ in range(5)]
    # Ranked by images waiting when entered: big (3), then mid (2), then one image each.
    assert taken[:3] == ["big", "big", "mid"] and sorted(taken[3:]) == ["mid", "small"]
    assert queue.take() is None and queue.total_waiting == 1  # big is at its limit
    queue.release("big")
    assert queue.take().ref.doc == 3 and queue.total_waiting == 0


def test_a_site_takes_nothing_until_it_holds_slots_and_not_while_paused():
    limits = Counter()
    queue = SiteQueue(lambda site: limits[site])
    for number in range(3):
        queue.add(job("wp.com", number, host=f"i{number}.wp.com"))
    assert queue.take() is None  # no slot held yet
    limits["wp.com"] = 2
    queue.refresh("wp.com")
    assert [queue.take().host for _ in range(2)] == ["i0.wp.com", "i1.wp.com"]
    assert queue.take() is None and queue.demand("wp.com") == 3
    limits["wp.com"] = 0  # paused
    queue.release("wp.com")
    assert queue.take() is None
    limits["wp.com"] = 2
    queue.refresh("wp.com")
    assert queue.take().host == "i2.wp.com"


def test_a_due_retry_goes_before_any_backlog():
    queue = SiteQueue(lambda site: 4)
    for number in range(5):
        queue.add(job("big", number))
    retry = job("small", 99)
    queue.requeue(retry, not_before=10.0)
    queue.promote(now=5.0)
    assert queue.take().site == "big"  # not due yet
    queue.promote(now=10.0)
    assert queue.take() is retry
    assert queue.waiting_for("small") == 0 and queue.total_waiting == 4


def test_only_a_long_backlog_starts_while_the_decoders_are_behind():
    queue = SiteQueue(lambda site: 2)
    for number in range(6):
        queue.add(job("big", number))
    queue.add(job("small", 10))
    assert [queue.take(min_backlog=4).site for _ in range(2)] == ["big", "big"]
    assert queue.take(min_backlog=4) is None  # big is at its limit; small's one image waits
    assert queue.take().site == "small"  # until the decoders catch up
    queue.release("big")
    assert queue.take(min_backlog=4).site == "big"  # four were waiting
    queue.release("big")
    assert queue.take(min_backlog=4) is None and queue.waiting_for("big") == 3


def test_drain_takes_out_what_cannot_wait_and_parked_images_stay_counted():
    queue = SiteQueue(lambda site: 2)
    jobs = [job("s", number) for number in range(4)]
    for item in jobs:
        queue.add(item)
    first = queue.take()
    queue.park(first)  # waits for robots.txt, its slot fetches it
    retry = queue.take()
    assert retry is jobs[1]
    queue.release("s")
    retry.deadline = 1.0
    queue.requeue(retry, not_before=0.5)
    dropped = queue.drain("s", keep=lambda j: j.deadline is None)
    assert dropped == [retry] and queue.demand("s") == 1 + 2 + 1  # parked, two waiting, active
    queue.promote(now=1.0)  # the dropped retry does not come back
    queue.release("s")  # robots.txt fetched: the parked image goes first
    queue.unpark(first)
    assert [queue.take() for _ in range(3)] == [first, jobs[2], None]  # two slots
    queue.release("s")
    assert queue.take() is jobs[3] and queue.total_waiting == 0
