"""download_shard end to end against real servers on 127.0.0.1."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from mmc4_assets.corpus.status import check_status, write_status
from mmc4_assets.downloader import DownloadSettings, ProgressInfo, download_shard
from mmc4_assets.downloader.refs import ImageRef
from mmc4_assets.downloader.scheduling.fetch_loop import FetchLoop
from mmc4_assets.downloader.storing.store import ImageJob
from mmc4_assets_tests.support.local_server import hang_up, image_bytes, send
from mmc4_devtools.loopback_web import bomb_png

SETTINGS = DownloadSettings(
    allow_private_networks=True,
    connect_timeout=1.0,
    read_timeout=1.0,
    total_deadline=2.0,
    backoff_base=0.05,
    backoff_max=0.1,
    max_bytes=2_000_000,
    max_concurrency=16,
    per_site=8,
    adaptive=False,  # fixed budgets here; the learned limits: test_capacity_web.py
    # One picture under many URLs here: not a stand-in (those: test_standins_run.py).
    standin_min_urls=0,
)
BIG = image_bytes(2000, 1000)
SMALL = image_bytes(500, 300)
BIG_PNG = image_bytes(1600, 900, "PNG")


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def by_key(table: pd.DataFrame) -> dict[tuple[int, int], dict]:
    return {(int(r["doc"]), int(r["index"])): r for r in table.to_dict("records")}


@pytest.mark.timeout(60)  # a hang guard: waiting out the 429's Retry-After alone takes 100 s
def test_every_fault_gets_its_outcome_and_no_bad_file(server, tmp_path: Path):
    def truncated(h):
        send(h, 200, SMALL[: len(SMALL) // 2])

    def midclose(h):
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Content-Length", str(len(SMALL)))
        h.end_headers()
        h.wfile.write(SMALL[:100])
        hang_up(h)

    s = server(
        {
            "/big.jpg": lambda h: send(h, 200, BIG),
            "/small.jpg": lambda h: send(h, 200, SMALL),
            "/big.png": lambda h: send(h, 200, BIG_PNG, "image/png"),
            "/500": lambda h: send(h, 500, b"oops", "text/plain"),
            "/html": lambda h: send(h, 200, b"<html><body>hello</body></html>", "image/jpeg"),
            "/truncated": truncated,
            "/midclose": midclose,
            "/huge": lambda h: send(h, 200, b"\xff\xd8" + b"\x00" * 3_000_000),
            "/bomb.png": lambda h: send(h, 200, bomb_png(), "image/png"),
            "/noai": lambda h: send(h, 200, SMALL, headers={"X-Robots-Tag": "otherbot: noai"}),
            "/gzip": lambda h: send(
                h, 200, gzip.compress(SMALL), headers={"Content-Encoding": "gzip"}
            ),
            "/redirect": lambda h: send(h, 301, b"", "text/plain", {"Location": "/small.jpg"}),
            "/stall": lambda h: time.sleep(4),
        }
    )
    # Throttling pauses a whole site: the 429 lives on a site of its own (another address).
    throttler = server(
        {"/429": lambda h: send(h, 429, b"", "text/plain", {"Retry-After": "100"})},
        host="127.0.0.9",
    )
    cases = [
        ("big.jpg", "/big.jpg", "ok"),
        ("small.jpg", "/small.jpg", "ok"),
        ("big.png", "/big.png", "ok"),
        ("missing.jpg", "/missing", "http_error"),
        ("e500.jpg", "/500", "http_error"),
        ("r429.jpg", "/429", "rate_limited"),
        ("html.jpg", "/html", "not_image"),
        ("trunc.jpg", "/truncated", "corrupt"),
        ("mid.jpg", "/midclose", "connection_error"),
        ("huge.jpg", "/huge", "too_large"),
        ("bomb.png", "/bomb.png", "too_large"),
        ("noai.jpg", "/noai", "opted_out"),
        ("gz.jpg", "/gzip", "ok"),
        ("redir.jpg", "/redirect", "ok"),
        ("stall.jpg", "/stall", "timeout"),
    ]
    refs = [
        ImageRef(0, i, name, (throttler if path == "/429" else s).url(path))
        for i, (name, path, _) in enumerate(cases)
    ]
    refs.append(ImageRef(1, 0, "ftp.jpg", "ftp://example.com/a.jpg"))
    refs.append(ImageRef(1, 1, "empty.jpg", ""))
    seen: list[ProgressInfo] = []
    table = download_shard(
        refs, data_dir=tmp_path, shard=7, settings=SETTINGS, progress=seen.append
    )
    rows = by_key(table)
    for i, (_, _, outcome) in enumerate(cases):
        assert rows[(0, i)]["outcome"] == outcome, (cases[i], rows[(0, i)]["error"])
    # A Retry-After past the image's deadline is not waited for: one request, the row says why.
    r429 = rows[(0, 5)]
    assert r429["attempts"] == 1 and "outlasts the deadline" in r429["error"]
    assert throttler.count("/429") == 1
    assert rows[(1, 0)]["outcome"] == rows[(1, 1)]["outcome"] == "invalid_url"
    assert rows[(0, 3)]["http_status"] == 404 and rows[(0, 4)]["attempts"] == 3
    assert check_status(table, refs, tmp_path) == []
    saved = {f"images/7/{name}" for name, _, outcome in cases if outcome == "ok"}
    assert files_under(tmp_path) == saved
    assert set(table.loc[table.outcome != "ok", "path"].isna()) == {True}
    with Image.open(tmp_path / "images/7/big.jpg") as image:
        assert (image.format, image.size) == ("JPEG", (800, 400))
    with Image.open(tmp_path / "images/7/big.png") as image:
        assert (image.format, image.size) == ("PNG", (800, 450))
    assert (tmp_path / "images/7/small.jpg").read_bytes() == SMALL
    assert (tmp_path / "images/7/gz.jpg").read_bytes() == SMALL
    big = rows[(0, 0)]
    assert (big["width"], big["height"], big["original_width"]) == (800, 400, 2000)
    data = (tmp_path / "images/7/big.jpg").read_bytes()
    assert big["sha256"] == hashlib.sha256(data).hexdigest() and big["bytes"] == len(data)
    assert seen and seen[-1].done == seen[-1].total == len(refs)
    assert sum(seen[-1].outcomes.values()) == len(refs)


def test_per_site_limit_holds(server, tmp_path: Path):
    s = server({f"/{i}.jpg": (lambda h: send(h, 200, SMALL)) for i in range(40)}, latency=0.05)
    other = server({f"/{i}.jpg": (lambda h: send(h, 200, SMALL)) for i in range(40)}, latency=0.05)
    refs = [ImageRef(i, 0, f"a{i}.jpg", s.url(f"/{i}.jpg")) for i in range(40)]
    refs += [ImageRef(100 + i, 0, f"b{i}.jpg", other.url(f"/{i}.jpg")) for i in range(40)]
    # Two "hosts": 127.0.0.1 and localhost are different names for the limit.
    refs[40:] = [r._replace(url=r.url.replace("127.0.0.1", "localhost")) for r in refs[40:]]
    settings = DownloadSettings(**{**vars(SETTINGS), "per_site": 3, "max_concurrency": 32})
    table = download_shard(refs, data_dir=tmp_path, shard=1, settings=settings)
    assert (table.outcome == "ok").all()
    assert 2 <= s.max_active <= 3 and 2 <= other.max_active <= 3


def test_request_seconds_sum_the_time_requests_were_in_flight(server, tmp_path: Path):
    """Each request lasts at least the server's latency, and no more than the run: the sum
    lies between (the figure behind the run's mean requests in flight)."""
    s = server({f"/{i}.jpg": (lambda h: send(h, 200, SMALL)) for i in range(24)}, latency=0.25)
    refs = [ImageRef(i, 0, f"a{i}.jpg", s.url(f"/{i}.jpg")) for i in range(24)]
    stats: dict = {}
    started = time.monotonic()
    table = download_shard(refs, data_dir=tmp_path, shard=1, settings=SETTINGS, stats=stats)
    wall = time.monotonic() - started
    assert (table.outcome == "ok").all()
    requests = 24 + 1  # and robots.txt
    assert 0.25 * requests * 0.9 <= stats["request_seconds"] <= wall * SETTINGS.per_site + 1


def test_resume_fetches_nothing_valid(server, tmp_path: Path):
    s = server({f"/{i}.jpg": (lambda h: send(h, 200, SMALL)) for i in range(10)})
    refs = [ImageRef(i, 0, f"{i}.jpg", s.url(f"/{i}.jpg")) for i in range(10)]
    first = download_shard(refs, data_dir=tmp_path, shard=3, settings=SETTINGS)
    assert s.fetches() == 10
    # Without a status file: files are checked by decoding.
    again = download_shard(refs, data_dir=tmp_path, shard=3, settings=SETTINGS)
    assert s.fetches() == 10 and (again.outcome == "ok").all()
    # With a status file: rows are carried over; a broken and a missing file are refetched,
    # and a killed run's temporary is swept.
    write_status(first, tmp_path, 3)
    folder = tmp_path / "images/3"
    (folder / "1.jpg").write_bytes(SMALL[:200])
    (folder / "2.jpg").unlink()
    (folder / ".5.jpg.abc.part").write_bytes(b"partial")
    third = download_shard(refs, data_dir=tmp_path, shard=3, settings=SETTINGS)
    images = [path for path, _, _ in s.requests if path != "/robots.txt"]
    assert s.fetches() == 12 and sorted(images[10:]) == ["/1.jpg", "/2.jpg"]
    assert (third.outcome == "ok").all() and not (folder / ".5.jpg.abc.part").exists()
    assert (folder / "1.jpg").read_bytes() == SMALL


def test_hostile_names_write_nothing_outside(server, tmp_path: Path):
    s = server({"/a.jpg": lambda h: send(h, 200, SMALL)})
    data_dir = tmp_path / "data"
    names = [
        "../../etc/passwd",
        "/abs",
        "a/b",
        "..",
        "x\x00y.jpg",
        ".hidden",
        "",
        "ok.jpg",
        "ok.jpg",
    ]
    refs = [ImageRef(0, i, name, s.url("/a.jpg")) for i, name in enumerate(names)]
    table = download_shard(refs, data_dir=data_dir, shard=0, settings=SETTINGS)
    assert (table.outcome == "ok").all()
    assert files_under(tmp_path) == {f"data/{p}" for p in table["path"]}
    assert table["path"].nunique() == len(names)
    assert all(p.startswith("images/0/") and p.count("/") == 2 for p in table["path"])
    assert table.loc[7, "path"] == "images/0/ok.jpg"
    assert list(table["image_name"]) == names


def test_private_address_blocked_without_request(server, tmp_path: Path):
    s = server({"/a.jpg": lambda h: send(h, 200, SMALL)})
    settings = DownloadSettings(**{**vars(SETTINGS), "allow_private_networks": False})
    refs = [ImageRef(0, 0, "a.jpg", s.url("/a.jpg"))]
    table = download_shard(refs, data_dir=tmp_path, shard=0, settings=settings)
    assert list(table.outcome) == ["blocked"] and s.fetches() == 0
    assert files_under(tmp_path) == set()


def test_targets_mode_conditional_refresh(server, tmp_path: Path):
    state = {"gone": False, "changed": False}
    other = image_bytes(600, 400)

    def validated(etag_value, body, can_vanish):
        def route(h):
            if can_vanish and state["gone"]:
                return send(h, 404, b"", "text/plain")
            current = '"v2"' if state["changed"] and body is other else etag_value
            if h.headers.get("If-None-Match") == current:
                h.send_response(304)
                h.send_header("ETag", current)
                h.send_header("Content-Length", "0")
                h.end_headers()
                return None
            payload = other if state["changed"] and body is other else SMALL
            return send(h, 200, payload, headers={"ETag": current})

        return route

    s = server(
        {
            "/same": validated('"v1"', SMALL, False),
            "/changes": validated('"v1"', other, False),
            "/vanishes": validated('"v1"', SMALL, True),
            "/untouched": validated('"v1"', SMALL, True),
        }
    )
    refs = [ImageRef(0, i, f"{p}.jpg", s.url(f"/{p}")) for i, p in enumerate(s.routes)]
    refs = [r._replace(image_name=r.image_name.lstrip("/")) for r in refs]
    first = download_shard(refs, data_dir=tmp_path, shard=5, settings=SETTINGS)
    assert (first.outcome == "ok").all() and (first.etag == '"v1"').all()
    state.update(gone=True, changed=True)
    before, seen = s.fetches(), len(s.requests)
    table = download_shard(
        refs,
        data_dir=tmp_path,
        shard=5,
        settings=SETTINGS,
        previous=first,
        targets={(0, 0), (0, 1), (0, 2)},
    )
    rows = by_key(table)
    assert s.fetches() - before == 3  # the untouched image was not requested
    assert rows[(0, 0)]["outcome"] == "ok" and rows[(0, 0)]["http_status"] == 304
    assert rows[(0, 0)]["fetched_at"] > by_key(first)[(0, 0)]["fetched_at"]
    assert rows[(0, 1)]["outcome"] == "ok" and rows[(0, 1)]["etag"] == '"v2"'
    assert (tmp_path / "images/5/changes.jpg").read_bytes() == other
    assert rows[(0, 2)]["outcome"] == "gone" and rows[(0, 2)]["path"] is None
    assert not (tmp_path / "images/5/vanishes.jpg").exists()
    assert rows[(0, 3)] == by_key(first)[(0, 3)]
    conditional = [h for p, _, h in s.requests[seen:] if p == "/same"]
    assert conditional[0]["If-None-Match"] == '"v1"'


def test_first_time_404_is_http_error_not_gone(server, tmp_path: Path):
    s = server({})
    refs = [ImageRef(0, 0, "a.jpg", s.url("/a.jpg"))]
    table = download_shard(refs, data_dir=tmp_path, shard=0, settings=SETTINGS, targets={(0, 0)})
    assert table.loc[0, "outcome"] == "http_error" and table.loc[0, "http_status"] == 404


def test_no_refs(tmp_path: Path):
    table = download_shard([], data_dir=tmp_path, shard=9, settings=SETTINGS)
    assert len(table) == 0 and "outcome" in table.columns
    assert os.path.isdir(tmp_path / "images/9")


def test_resized_result_is_jpeg_readable(server, tmp_path: Path):
    s = server({"/big.jpg": lambda h: send(h, 200, BIG)})
    refs = [ImageRef(0, 0, "big.jpg", s.url("/big.jpg"))]
    download_shard(refs, data_dir=tmp_path, shard=0, settings=SETTINGS)
    with Image.open(io.BytesIO((tmp_path / "images/0/big.jpg").read_bytes())) as image:
        image.load()
        assert image.size == (800, 400)


def test_target_with_missing_file_is_refetched_plainly(server, tmp_path: Path):
    s = server({"/a.jpg": lambda h: send(h, 200, SMALL, headers={"ETag": '"v1"'})})
    refs = [ImageRef(0, 0, "a.jpg", s.url("/a.jpg"))]
    first = download_shard(refs, data_dir=tmp_path, shard=2, settings=SETTINGS)
    (tmp_path / "images/2/a.jpg").unlink()
    table = download_shard(
        refs, data_dir=tmp_path, shard=2, settings=SETTINGS, previous=first, targets={(0, 0)}
    )
    assert table.loc[0, "outcome"] == "ok" and table.loc[0, "http_status"] == 200
    assert "If-None-Match" not in s.requests[-1][2]
    assert (tmp_path / "images/2/a.jpg").read_bytes() == SMALL


def test_progress_is_reported_at_intervals(server, tmp_path: Path):
    s = server({f"/{i}.jpg": (lambda h: send(h, 200, SMALL)) for i in range(6)}, latency=0.2)
    refs = [ImageRef(i, 0, f"{i}.jpg", s.url(f"/{i}.jpg")) for i in range(6)]
    settings = DownloadSettings(**{**vars(SETTINGS), "max_concurrency": 1})
    seen: list[ProgressInfo] = []
    download_shard(
        refs,
        data_dir=tmp_path,
        shard=0,
        settings=settings,
        progress=seen.append,
        progress_interval=0.3,
    )
    assert len(seen) >= 4
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    last = seen[-1]
    assert (last.done, last.total, last.outcomes) == (6, 6, {"ok": 6})
    assert last.images_per_second > 0 and last.bytes == 6 * len(SMALL)


def test_failing_progress_callback_stops_cleanly(server, tmp_path: Path):
    # Two at a time, 0.3 s each: the whole shard takes 3 s, the callback fails at its second call.
    s = server({f"/{i}.jpg": (lambda h: send(h, 200, SMALL)) for i in range(20)}, latency=0.3)
    refs = [ImageRef(i, 0, f"{i}.jpg", s.url(f"/{i}.jpg")) for i in range(20)]
    settings = DownloadSettings(**{**vars(SETTINGS), "max_concurrency": 2, "per_site": 2})
    calls = []

    def explode(info: ProgressInfo) -> None:
        calls.append(info)
        if len(calls) == 2:
            raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        download_shard(
            refs,
            data_dir=tmp_path,
            shard=0,
            settings=settings,
            progress=explode,
            progress_interval=0.1,
        )
    # The run stopped where the callback failed: the rest was never requested, and nothing is
    # left half-written.
    assert len(calls) == 2 and 1 <= s.count() and s.fetches() < len(refs)
    folder = tmp_path / "images" / "0"
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]
    assert len(list(folder.iterdir())) < len(refs)


def test_bytes_in_flight_bound_the_requests_started(server, tmp_path: Path):
    body = image_bytes(700, 500)
    s = server({f"/{i}.jpg": (lambda h: send(h, 200, body)) for i in range(24)}, latency=0.05)
    refs = [ImageRef(i, 0, f"{i}.jpg", s.url(f"/{i}.jpg")) for i in range(24)]
    # Generous timeouts: this is about how many requests start, not about slow servers.
    patient = {"connect_timeout": 10.0, "read_timeout": 10.0, "total_deadline": 30.0}
    roomy = DownloadSettings(**{**vars(SETTINGS), **patient, "max_concurrency": 32, "per_site": 32})
    table = download_shard(refs, data_dir=tmp_path / "roomy", shard=0, settings=roomy)
    assert (table.outcome == "ok").all() and s.max_active > 2
    s.max_active = 0
    tight = DownloadSettings(**{**vars(roomy), "max_bytes_in_flight": 2 * len(body)})
    table = download_shard(refs, data_dir=tmp_path / "tight", shard=0, settings=tight)
    assert (table.outcome == "ok").all()
    # Room for two bodies (and a first guess of 256 KB each): never more than two requests.
    assert 1 <= s.max_active <= 2


class _Rows(FetchLoop):
    def __init__(self, settings: DownloadSettings) -> None:
        super().__init__(0, settings)
        self.rows: dict[int, dict] = {}

    def keep(self, position: int, row: dict) -> None:
        self.rows[position] = row


def test_bytes_bound_holds_while_the_decoders_are_behind(server, tmp_path: Path):
    # Photo-like bodies that take a decoder far longer than loopback takes to send them, all on
    # one host: the run's critical path, whose requests go on while the decoders are behind.
    noise = Image.frombytes("RGB", (1200, 1200), os.urandom(1200 * 1200 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, format="JPEG", quality=90)
    body = buffer.getvalue()
    count = 40
    s = server({f"/{i}.jpg": (lambda h: send(h, 200, body)) for i in range(count)})
    budget = 3 * len(body)
    settings = DownloadSettings(
        **{
            **vars(SETTINGS),
            "total_deadline": 60.0,
            "max_bytes": 10 * len(body),
            "max_concurrency": 8,
            "per_site": 4,
            "decode_workers": 1,
            "max_bytes_in_flight": budget,
        }
    )
    jobs = []
    for i in range(count):
        ref = ImageRef(i, 0, f"{i}.jpg", s.url(f"/{i}.jpg"))
        jobs.append(ImageJob(i, ref, ref.image_name, tmp_path / ref.image_name, "", None, "h"))
    run = _Rows(settings)
    run.fetch_here(jobs)
    # Every image is fetched under a bound of three bodies with one slow decoder: the bound
    # holds requests back without ever stalling the run (the rule itself: test_admission.py).
    assert [run.rows[i]["outcome"] for i in range(count)] == ["ok"] * count
