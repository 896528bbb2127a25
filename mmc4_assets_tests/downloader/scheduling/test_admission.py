"""Admission: the bytes bound, the decoders' backlog and the critical path, without a network."""

from __future__ import annotations

from pathlib import Path

from mmc4_assets.downloader import DownloadSettings, ImageRef
from mmc4_assets.downloader.fetching.client import ByteMeter, FetchResult
from mmc4_assets.downloader.scheduling.admission import (
    Admission,
    critical_backlog,
    room_for_request,
    unfetched,
)
from mmc4_assets.downloader.scheduling.site_queue import SiteQueue
from mmc4_assets.downloader.storing.store import ImageJob

MB = 1024 * 1024


def job(site: str, number: int) -> ImageJob:
    ref = ImageRef(number, 0, f"{number}.jpg", f"http://{site}/{number}.jpg")
    made = ImageJob(number, ref, ref.image_name, Path(ref.image_name), ref.image_name, None, site)
    made.site = site
    return made


def admission(settings: DownloadSettings, limit: int = 100) -> Admission:
    # No gate: next_job asks only the queue (whose limit stands in for the site's slots).
    return Admission(settings, gate=None, queue=SiteQueue(lambda site: limit), end=print)


def test_the_bytes_bound_counts_held_bodies_and_a_mean_body_per_request_in_flight():
    meter = ByteMeter(first_guess=1 * MB)
    assert room_for_request(0, meter, bound=4 * MB)
    assert room_for_request(3, meter, bound=4 * MB)  # 4 mean bodies fit
    assert not room_for_request(4, meter, bound=4 * MB)
    meter.add(3 * MB)  # bodies waiting for a decoder
    assert not room_for_request(1, meter, bound=4 * MB)
    assert room_for_request(0, meter, bound=4 * MB)  # 3 MB held + one more: 4 MB
    meter.add(2 * MB)
    assert not room_for_request(0, meter, bound=4 * MB)
    meter.release(5 * MB)
    big = ByteMeter(first_guess=10 * MB)
    assert room_for_request(0, big, bound=4 * MB)  # one body above the bound still runs


def test_next_job_stops_at_the_bound_and_goes_on_when_bodies_are_decoded():
    settings = DownloadSettings(max_concurrency=64, max_bytes_in_flight=4 * MB)
    gate = admission(settings)
    gate.add([job("a.test", n) for n in range(10)])
    meter = ByteMeter(first_guess=1 * MB)
    started = 0
    while gate.next_job(started, 0, backlog=16, meter=meter) is not None:
        started += 1
    assert started == 4  # four mean bodies fill the bound
    meter.add(2 * MB)  # two bodies arrived, waiting for the decoders; their requests ended
    assert gate.next_job(2, 0, backlog=16, meter=meter) is None
    meter.release(2 * MB)  # decoded
    assert gate.next_job(2, 0, backlog=16, meter=meter) is not None


def test_with_the_decoders_behind_only_the_critical_path_starts():
    settings = DownloadSettings(max_concurrency=8, per_site=2, max_bytes_in_flight=64 * MB)
    gate = admission(settings)
    gate.add([job("big.test", n) for n in range(10)] + [job("small.test", 100)])
    meter = ByteMeter(first_guess=1)
    # Decoders behind (decoding >= backlog): only a site with a long backlog gets requests.
    assert critical_backlog(settings, 11) == 4
    taken = gate.next_job(0, decoding=16, backlog=16, meter=meter)
    assert taken is not None and taken.site == "big.test"
    gate.queue.release("big.test")
    lone = admission(settings)
    lone.add([job("small.test", 100)])
    assert lone.next_job(0, decoding=16, backlog=16, meter=meter) is None
    assert lone.next_job(0, decoding=15, backlog=16, meter=meter) is not None


def test_an_image_not_fetched_keeps_its_last_outcome_or_ends_rate_limited():
    fresh = job("a.test", 1)
    result = unfetched(fresh, "site paused")
    assert result.outcome == "rate_limited" and "a.test: site paused" in result.error
    tried = job("a.test", 2)
    tried.last_result = FetchResult("http_error", 503, "503")
    assert unfetched(tried, "site paused") is tried.last_result
