"""The loopback web must behave as documented, or every downloader test built on it lies."""

from __future__ import annotations

import io
import struct
import threading
from collections import Counter

import pytest
import requests
from PIL import Image

from mmc4_devtools.loopback_web import LoopbackWeb, build_benchmark_urls


@pytest.fixture(scope="module")
def web():
    with LoopbackWeb(hosts=2, latency_ms=5, stall_seconds=30) as server:
        yield server


def test_hosts_are_distinct_loopback_addresses(web):
    assert [u.split(":")[1] for u in web.base_urls] == ["//127.0.0.1", "//127.0.0.2"]


@pytest.mark.parametrize(
    ("path", "fmt", "size"),
    [("/img/640x480/7.jpg", "JPEG", (640, 480)), ("/img/120x900/3.png", "PNG", (120, 900))],
)
def test_image_decodes_at_the_requested_size(web, path, fmt, size):
    response = requests.get(web.url(1, path), timeout=5)
    assert response.status_code == 200
    image = Image.open(io.BytesIO(response.content))
    image.load()
    assert (image.format, image.size) == (fmt, size)
    assert response.content == requests.get(web.url(0, path), timeout=5).content  # deterministic


def test_conditional_requests_get_304(web):
    url = web.url(0, "/img/300x300/1.jpg")
    first = requests.get(url, timeout=5)
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert requests.get(url, headers={"If-None-Match": etag}, timeout=5).status_code == 304
    assert requests.get(url, headers={"If-Modified-Since": modified}, timeout=5).status_code == 304
    assert requests.get(url, headers={"If-None-Match": '"other"'}, timeout=5).status_code == 200


def test_429_then_image_and_arrival_times_are_recorded(web):
    path = "/fault/429/1/1/a.jpg"
    first = requests.get(web.url(0, path), timeout=5)
    assert (first.status_code, first.headers["Retry-After"]) == (429, "1")
    second = requests.get(web.url(0, path), timeout=5)
    assert second.status_code == 200 and second.headers["Content-Type"] == "image/jpeg"
    assert web.requests_for(path) == 2
    times = web.request_times(path)
    assert len(times) == 2 and times[0] <= times[1]


def test_truncated_body_is_short(web):
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(web.url(0, "/fault/truncated/b.jpg"), timeout=5)
    response = requests.get(web.url(0, "/fault/truncated/b.jpg"), timeout=5, stream=True)
    declared = int(response.headers["Content-Length"])
    received = response.raw.read(declared, decode_content=False)
    assert 0 < len(received) < declared


def test_bomb_is_small_but_declares_a_huge_image(web):
    body = requests.get(web.url(0, "/fault/bomb.png"), timeout=5).content
    assert len(body) < 20_000
    assert struct.unpack(">II", body[16:24]) == (40_000, 40_000)


def test_concurrency_counter_sees_parallel_requests():
    with LoopbackWeb(hosts=2, latency_ms=300) as slow:
        barrier = threading.Barrier(6)

        def fetch(i: int) -> None:
            barrier.wait()
            requests.get(slow.url(0, f"/img/10x10/{i}.jpg"), timeout=5)

        threads = [threading.Thread(target=fetch, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert slow.max_concurrent(0) >= 4
        assert slow.max_concurrent(1) == 0
        assert slow.total_requests == 6
        slow.reset_counters()
        assert (slow.total_requests, slow.max_concurrent(0)) == (0, 0)


@pytest.mark.timeout(60)  # a hang guard: the stall lasts an hour unless stop() cuts it
def test_stop_does_not_hang_on_a_stalled_request():
    server = LoopbackWeb(hosts=1, latency_ms=0, stall_seconds=3600).start()
    url = server.url(0, "/fault/stall/c.jpg")
    opened = threading.Event()
    ended: list[object] = []

    def client() -> None:
        try:
            with requests.get(url, timeout=30, stream=True) as response:
                opened.set()
                ended.append(response.raw.read(10))
        except Exception as error:  # the server hangs up on us: expected
            ended.append(error)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    assert opened.wait(5)
    server.stop()
    # The client's read ended because the server cut the connection, not by its own timeout.
    thread.join(40)
    assert not thread.is_alive() and len(ended) == 1
    assert ended[0] == b"" or "timed out" not in repr(ended[0]).lower(), ended[0]


def test_benchmark_urls_cover_every_fault_kind(web):
    entries = build_benchmark_urls(web, 1000, seed=3)
    assert len(entries) == 1000 and len({e["image_name"] for e in entries}) == 1000
    kinds = {e["url"].split("/")[4].split("?")[0] for e in entries if "/fault/" in e["url"]}
    assert {"404", "stall", "bomb.png", "redirect-private", "oversize-nolength"} <= kinds
    assert Counter(e["expect"] for e in entries)["ok"] > 850
    assert {e["url"].split("/")[2] for e in entries} == {u[7:] for u in web.base_urls}
