"""The host queue: per-host limit, busiest hosts first, due retries before everything else."""

from __future__ import annotations

from pathlib import Path

from mmc4_assets.downloader import ImageRef
from mmc4_assets.downloader.scheduling.hosts import HostQueue
from mmc4_assets.downloader.storing.store import ImageJob


def job(host: str, number: int) -> ImageJob:
    ref = ImageRef(number, 0, f"{number}.jpg", f"http://{host}/{number}.jpg")
    return ImageJob(number, ref, ref.image_name, Path(ref.image_name), ref.image_name, None, host)


def test_busiest_host_first_within_its_limit():
    queue = HostQueue(per_host=2)
    for number, host in enumerate(["small", "big", "big", "big", "mid", "mid"]):
        queue.add(job(host, number))
    taken = [queue.take().host for _ in range(5)]
    # Ranked by images waiting when entered: big (3), then mid (2), then one image each.
    assert taken[:3] == ["big", "big", "mid"] and sorted(taken[3:]) == ["mid", "small"]
    assert queue.take() is None and queue.total_waiting == 1  # big is at its limit
    queue.release("big")
    assert queue.take().ref.doc == 3 and queue.total_waiting == 0


def test_a_due_retry_goes_before_any_backlog():
    queue = HostQueue(per_host=4)
    for number in range(5):
        queue.add(job("big", number))
    retry = job("small", 99)
    queue.requeue(retry, not_before=10.0)
    queue.promote(now=5.0)
    assert queue.take().host == "big"  # not due yet
    queue.promote(now=10.0)
    assert queue.take() is retry
    assert queue.waiting_for("small") == 0 and queue.total_waiting == 4


def test_only_a_long_backlog_starts_while_the_decoders_are_behind():
    queue = HostQueue(per_host=2)
    for number in range(6):
        queue.add(job("big", number))
    queue.add(job("small", 10))
    assert [queue.take(min_backlog=4).host for _ in range(2)] == ["big", "big"]
    assert queue.take(min_backlog=4) is None  # big is at its limit; small's one image waits
    assert queue.take().host == "small"  # until the decoders catch up
    queue.release("big")
    assert queue.take(min_backlog=4).host == "big"  # four were waiting
    queue.release("big")
    assert queue.take(min_backlog=4) is None and queue.waiting_for("big") == 3
