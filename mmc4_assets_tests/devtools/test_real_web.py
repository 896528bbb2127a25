"""The real-shaped web must serve what it promises: the download benchmark's verdicts rest on it."""

from __future__ import annotations

import hashlib
import io
import socket
import time
from collections import Counter
from datetime import UTC, datetime

import certifi
import pytest
import requests
import urllib3
from PIL import Image

from mmc4_assets.corpus.status import normalize_status
from mmc4_assets.downloader.storing.standins import find_standins
from mmc4_devtools.real_web import FAULTS, RealWeb, RealWebConfig, make_plan
from mmc4_devtools.real_web.pool import served_body

SMALL = RealWebConfig(
    images=200,
    hosts=40,
    names=False,  # names: test_real_web_names.py
    dead_hosts=0.05,
    silent_hosts=0.05,
    fault_fraction=0.15,
    latency_median_ms=5,
    latency_sigma=0.3,
    latency_cap_ms=50,
    connect_ms=5,
    bytes_per_second=20_000_000,
    pool_size=6,
    max_side=900,
    stall_seconds=20,
    max_runtime_s=300,
)
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"RIFF")


@pytest.fixture(scope="module")
def web():
    with RealWeb(SMALL) as server:
        yield server


def _one(web: RealWeb, **where) -> dict:
    return next(e for e in web.entries() if all(e[k] == v for k, v in where.items()))


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.split("/")[2].split(":")
    return host, int(port)


def plain_outcome(url: str, ca: str) -> str:
    """What a minimal careful downloader (requests + Pillow, 1 s timeouts) makes of a URL."""
    for attempt in range(3):
        try:
            response = requests.get(url, verify=ca, timeout=(1, 1), stream=True)
        except (requests.exceptions.ConnectTimeout, requests.exceptions.ReadTimeout):
            return "timeout"
        except requests.exceptions.ConnectionError as error:
            timed_out = "timed out" in str(error)  # a TLS handshake that never completes
            return "timeout" if timed_out else "connection_error"
        with response:
            if response.status_code in (429, 503) and attempt < 2:
                time.sleep(float(response.headers.get("Retry-After", 0)))
                continue
            if response.status_code != 200:
                return "http_error"
            if "noai" in response.headers.get("X-Robots-Tag", ""):
                return "opted_out"
            if int(response.headers.get("Content-Length", 0)) > 25_000_000:
                return "too_large"
            try:
                body = response.content
            except requests.exceptions.ConnectionError as error:
                timed_out = isinstance(error.args[0], urllib3.exceptions.ReadTimeoutError)
                return "timeout" if timed_out else "connection_error"
            except requests.exceptions.ChunkedEncodingError:
                return "connection_error"
        if not body.startswith(_IMAGE_MAGIC):
            return "not_image"
        try:
            with Image.open(io.BytesIO(body)) as image:
                if image.width * image.height > 100_000_000:
                    return "too_large"
                image.load()
        except Image.DecompressionBombError:
            return "too_large"
        except Exception:  # noqa: BLE001 - any decoding failure
            return "corrupt"
        return "ok"
    return "http_error"


def test_plan_has_the_promised_shape():
    plan = make_plan(SMALL)
    assert make_plan(SMALL) == plan  # both sides of the wire compute the same plan
    per_host = Counter(image.host for image in plan.images)
    assert len(plan.images) == 200 and set(per_host) == set(range(40))  # every host holds one
    assert per_host[0] == max(per_host.values()) > 10  # a CDN-like head, a long tail
    assert sum(n <= 3 for n in per_host.values()) >= 20
    kinds = Counter(host.kind for host in plan.hosts)
    assert (kinds["dead"], kinds["silent"]) == (2, 2)
    assert len({host.ip for host in plan.hosts}) == 40
    assert all(host.ip.startswith("127.77.") for host in plan.hosts)
    assert 15 <= sum(host.scheme == "https" for host in plan.hosts) <= 35
    assert {image.fault for image in plan.images if image.fault} == set(FAULTS)
    assert all(plan.hosts[image.host].kind == "live" for image in plan.images if image.fault)


def test_no_real_image_is_a_stand_in():
    """The web's ok images are each their own body (its pool picture and a trailer), so that
    download_shard's stand-in rule, one body under many URLs of a site, finds none of them; with
    the pool's bodies alone it would (a fifth of them on the benchmark's web)."""
    config = RealWebConfig(images=3_000)
    plan = make_plan(config)
    pool = [b"picture %d" % i for i in range(config.pool_size)]

    def table(body) -> object:
        rows = [
            {"shard": 0, "doc": i // 5, "index": i % 5, "image_name": str(i), "outcome": "ok",
             "url": f"https://{plan.hosts[image.host].name}{image.path}", "width": 500,
             "height": 400, "host": plan.hosts[image.host].name, "fetched_at": datetime.now(UTC),
             "attempts": 1, "body_sha256": hashlib.sha256(body(image)).hexdigest()}
            for i, image in enumerate(plan.images) if image.expect == "ok"
        ]  # fmt: skip
        return normalize_status(rows)

    assert find_standins(table(lambda image: served_body(pool[image.pool], image.index))) == {}
    assert len(find_standins(table(lambda image: pool[image.pool]))) > 200


def test_two_images_of_one_pool_picture_are_two_bodies_of_one_picture(web):
    plan = make_plan(SMALL)
    entries = {e["url"]: e for e in web.entries()}
    by_pool: dict[int, list[str]] = {}
    for image in plan.images:
        url = web.url(image)
        entry = entries[url]
        if entry["host_kind"] == "live" and entry["fault"] is None and entry["expect"] == "ok":
            by_pool.setdefault(image.pool, []).append(url)
    first, second = next(urls for urls in by_pool.values() if len(urls) >= 2)[:2]
    bodies = [
        requests.get(url, verify=str(web.ca_file), timeout=5).content for url in (first, second)
    ]
    assert bodies[0] != bodies[1]
    pictures = []
    for body in bodies:
        with Image.open(io.BytesIO(body)) as image:
            image.load()
            pictures.append(image.tobytes())
    assert pictures[0] == pictures[1]


def test_https_verifies_with_the_generated_ca_only(web):
    entry = next(
        e
        for e in web.entries()
        if e["url"].startswith("https") and e["host_kind"] == "live" and e["fault"] is None
    )
    response = requests.get(entry["url"], verify=str(web.ca_file), timeout=5)
    assert response.status_code == 200
    Image.open(io.BytesIO(response.content)).load()
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(entry["url"], verify=certifi.where(), timeout=5)


def test_dead_host_refuses_connections(web):
    host, port = _host_port(_one(web, host_kind="dead")["url"])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=2).close()


def test_silent_host_accepts_and_never_answers(web):
    host, port = _host_port(_one(web, host_kind="silent")["url"])
    with socket.create_connection((host, port), timeout=2) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(1)


@pytest.mark.parametrize("kind", ["ok", "dead", "silent", *FAULTS])
def test_expected_outcome_is_what_a_plain_client_sees(web, kind):
    if kind in ("dead", "silent"):
        entry = _one(web, host_kind=kind)
    else:
        entry = _one(web, host_kind="live", fault=None if kind == "ok" else kind)
    web.reset()  # flaky hosts fail again for this client
    assert plain_outcome(entry["url"], str(web.ca_file)) == entry["expect"]


def test_redirects_stay_on_the_host_and_end_at_the_image(web):
    entry = _one(web, fault="redirect")
    response = requests.get(entry["url"], verify=str(web.ca_file), timeout=5)
    assert [r.status_code for r in response.history] == [302, 302]
    assert {_host_port(r.url) for r in [*response.history, response]} == {_host_port(entry["url"])}
    assert response.content.startswith(_IMAGE_MAGIC)


def test_rate_limit_and_flaky_hosts_answer_once_then_serve(web):
    web.reset()
    limited, flaky = _one(web, fault="429")["url"], _one(web, fault="flaky503")["url"]
    first = requests.get(limited, verify=str(web.ca_file), timeout=5)
    assert (first.status_code, first.headers["Retry-After"]) == (429, "1")
    assert requests.get(flaky, verify=str(web.ca_file), timeout=5).status_code == 503
    for url in (limited, flaky):
        again = requests.get(url, verify=str(web.ca_file), timeout=5)
        assert again.status_code == 200 and again.content.startswith(_IMAGE_MAGIC)


def test_fast_mode_serves_every_url_at_once_and_without_faults(web):
    chosen = [_one(web, host_kind="dead"), _one(web, host_kind="silent")]
    chosen += [_one(web, fault=kind) for kind in ("404", "html", "truncated", "stall")]
    web.set_mode(latency=False, faults=False)
    try:
        for entry in chosen:
            assert plain_outcome(entry["url"], str(web.ca_file)) == "ok", entry
    finally:
        web.set_mode(latency=True, faults=True)
    host, port = _host_port(_one(web, host_kind="dead")["url"])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=2).close()
    assert plain_outcome(_one(web, fault="404")["url"], str(web.ca_file)) == "http_error"


def test_two_processes_share_the_hosts_and_stop_when_their_parent_lets_go():
    web = RealWeb(RealWebConfig(**{**vars(SMALL), "dead_hosts": 0}), processes=2).start()
    procs = [server.proc for server in web._servers]
    try:
        assert sorted(s["hosts"] for s in web.startup) == [20, 20]
        entries = [e for e in web.entries() if e["fault"] is None and e["host_kind"] == "live"]
        hosts = {}
        for entry in entries:  # one URL on an even host, one on an odd host
            hosts.setdefault(int(_host_port(entry["url"])[0].rsplit(".", 1)[1]) % 2, entry)
        for entry in hosts.values():
            assert plain_outcome(entry["url"], str(web.ca_file)) == "ok"
    finally:
        web.stop()  # closes their stdin: they stop themselves
    assert [proc.returncode for proc in procs] == [0, 0]
    assert not web.workdir.exists()


def test_server_stops_by_itself_after_its_maximum_runtime():
    web = RealWeb(RealWebConfig(**{**vars(SMALL), "max_runtime_s": 1.0})).start()
    try:
        assert web._servers[0].proc.wait(timeout=20) == 0  # nobody asked it to stop
    finally:
        web.stop()
