"""Names, sites, SNI, robots.txt and throttling of the real-shaped web; its DNS server and the
network namespace clients resolve it in. The engine's politeness and DNS verdicts rest on them."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import protego
import pytest

from mmc4_devtools import netns
from mmc4_devtools.dns_server import DnsProcess, NameRecord
from mmc4_devtools.real_web import (
    DISALLOWED_OUTCOME,
    RealWeb,
    RealWebConfig,
    make_plan,
)
from mmc4_devtools.real_web.sites import PRODUCT_TOKEN, site_of

needs_netns = pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))

QUICK = dict(
    images=300,
    latency_median_ms=5,
    latency_sigma=0.0,
    connect_ms=0,
    bytes_per_second=50_000_000,
    pool_size=4,
    max_side=600,
    stall_seconds=10,
    dns_port=0,  # outside a namespace: any free port, nobody resolves through it here
    max_runtime_s=300,
)


def _get(ip: str, port: int, name: str, path: str, ca: str | None, scheme: str) -> tuple:
    """One GET to ``ip`` naming host ``name`` (SNI and Host): (status, headers, certificate)."""
    sock = socket.create_connection((ip, port), timeout=10)
    cert = None
    if scheme == "https":
        context = ssl.create_default_context(cafile=ca)
        sock = context.wrap_socket(sock, server_hostname=name)
        cert = sock.getpeercert()
    with sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:])
    return int(head[0].split()[1]), headers, cert, data.split(b"\r\n\r\n", 1)[1]


def _names_in(cert: dict) -> set[str]:
    return {value for kind, value in cert["subjectAltName"] if kind == "DNS"}


# --------------------------------------------------------------------------- the plan


def test_names_sites_and_density_are_the_real_webs():
    plan = make_plan(RealWebConfig(images=3_000, seed=3))
    assert len(plan.hosts) == round(3_000 / 2.088)  # ~2 images per host by default
    assert len({h.name for h in plan.hosts}) == len(plan.hosts)
    sites = {h.name: h.site for h in plan.hosts}
    assert sites["i0.wp.com"] == sites["i3.wp.com"] == "wp.com"  # one CDN, one site
    assert sites["1.bp.blogspot.com"] == "bp.blogspot.com"
    cloudfront = [h for h in plan.hosts if h.name.endswith(".cloudfront.net")]
    assert len(cloudfront) > 3 and len({h.site for h in cloudfront}) == len(cloudfront)
    wordpress = [h for h in plan.hosts if h.name.endswith(".files.wordpress.com")]
    assert len(wordpress) > 3 and {h.site for h in wordpress} == {"wordpress.com"}
    assert any(h.site.endswith(".co.uk") and h.site.count(".") == 2 for h in plan.hosts)
    assert site_of("a.b.unknowntld") == "b.unknowntld" and site_of("127.77.0.1") == "127.77.0.1"
    per_host = Counter(image.host for image in plan.images)
    assert per_host[0] > 50 and sum(n <= 3 for n in per_host.values()) > 0.8 * len(plan.hosts)
    fates = Counter(h.dns for h in plan.hosts)
    assert fates["nxdomain"] > fates["servfail"] > 0 and fates["silent"] > 0
    failing = {h.index for h in plan.hosts if h.dns != "ok"}
    assert {i.expect for i in plan.images if i.host in failing} == {"connection_error"}
    by_ip = make_plan(RealWebConfig(images=3_000, seed=3, names=False))
    assert [i.path for i in by_ip.images] == [i.path for i in plan.images]  # same web, by IP
    assert all(i.expect != "connection_error" or by_ip.hosts[i.host].kind == "dead" or i.fault
               for i in by_ip.images)  # fmt: skip


def test_robots_expectations_agree_with_protego_for_our_token():
    plan = make_plan(RealWebConfig(images=6_000, seed=1))
    checked = Counter()
    for image in plan.images:
        host = plan.hosts[image.host]
        text = plan.robots_text(host)
        allowed = text is None or protego.Protego.parse(text).can_fetch(image.path, PRODUCT_TOKEN)
        assert allowed == (not image.disallowed), (host.name, image.path, text)
        checked[(text is not None, allowed)] += 1
        if image.disallowed and host.kind == "live" and host.dns == "ok":
            assert image.expect == DISALLOWED_OUTCOME and image.fault is None
    assert checked[(True, True)] > 100 and checked[(True, False)] > 50
    share = sum(i.disallowed for i in plan.images) / len(plan.images)
    assert 0.015 < share < 0.05  # the knob: 3% of images
    traps = [i for i in plan.images if i.path.startswith(("/photos/", "/uploads/public/"))]
    assert traps and not any(i.disallowed for i in traps)  # other groups' rules are not ours
    assert not any(i.disallowed for i in make_plan(RealWebConfig(robots_disallowed=0)).images)


# --------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def web():
    with RealWeb(RealWebConfig(**QUICK, throttle_sites=1, throttle_burst=2)) as server:
        yield server


def _host(web: RealWeb, **where):
    return next(h for h in web.plan.hosts if all(getattr(h, k) == v for k, v in where.items()))


def test_sni_picks_the_certificate_naming_the_host(web):
    https = [h for h in web.plan.hosts if h.scheme == "https" and h.kind == "live"]
    one, other = https[-1], https[-2]  # long-tail hosts: a certificate each
    ca = str(web.ca_file)
    _, _, cert, _ = _get(one.ip, web.port, one.name, "/robots.txt", ca, "https")
    assert _names_in(cert) == {one.name}
    # Chosen by the name asked for, not by the address: the other host's, on this address.
    _, _, cert, _ = _get(one.ip, web.port, other.name, "/robots.txt", ca, "https")
    assert _names_in(cert) == {other.name}
    cdn = _host(web, name="i2.wp.com")
    _, _, cert, _ = _get(cdn.ip, web.port, cdn.name, "/robots.txt", ca, "https")
    assert _names_in(cert) == {"*.wp.com"}
    with pytest.raises(ssl.SSLCertVerificationError):  # a name it has no certificate for
        _get(one.ip, web.port, "unknown.example.org", "/robots.txt", ca, "https")


def test_in_flight_requests_are_counted_per_site_and_per_host():
    config = RealWebConfig(**{**QUICK, "latency_median_ms": 1_500}, robots_files=0)
    with RealWeb(config) as web:
        plan = web.plan
        wp = [h for h in plan.hosts if h.site == "wp.com"]
        lone = next(h for h in reversed(plan.hosts) if h.kind == "live" and h.dns == "ok")
        jobs = [(h, "/robots.txt") for h in wp[:3]] + [(lone, "/robots.txt"), (wp[0], "/x")]
        ca = str(web.ca_file)
        threads = [
            threading.Thread(target=_get, args=(h.ip, web.port, h.name, p, ca, h.scheme))
            for h, p in jobs
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = web.stats()
        assert stats["max_in_flight_site"]["wp.com"] == 4  # i0 twice, i1, i2: one site
        assert stats["max_in_flight_host"]["i0.wp.com"] == 2
        assert stats["max_in_flight_host"]["i1.wp.com"] == 1
        assert stats["max_in_flight_site"][lone.site] == 1
        assert stats["max_in_flight_any_site"] == 4
        assert stats["robots_requests"]["i1.wp.com"] == 1
        web.reset()
        assert web.stats()["max_in_flight_any_site"] == 0


def test_robots_files_are_served_and_requests_counted(web):
    ca = str(web.ca_file)
    image = next(
        i
        for i in web.plan.images
        if i.disallowed and web.plan.hosts[i.host].kind == "live" and i.path.count("/") > 1
    )
    host = web.plan.hosts[image.host]
    web.reset()
    status, _, _, body = _get(host.ip, web.port, host.name, "/robots.txt", ca, host.scheme)
    assert status == 200 and body.decode() == web.plan.robots_text(host)
    assert not protego.Protego.parse(body.decode()).can_fetch(image.path, PRODUCT_TOKEN)
    _get(host.ip, web.port, host.name, image.path, ca, host.scheme)
    bare = _host(web, robots="none", kind="live")
    assert _get(bare.ip, web.port, bare.name, "/robots.txt", ca, bare.scheme)[0] == 404
    broken = _host(web, robots="5xx")
    assert _get(broken.ip, web.port, broken.name, "/robots.txt", ca, broken.scheme)[0] == 503
    stats = web.stats()
    assert stats["robots_requests"] == {host.name: 1, bare.name: 1, broken.name: 1}
    assert stats["disallowed_requests"] == {host.name: 1}


def test_a_throttled_site_pauses_and_counts_requests_inside_its_pauses(web):
    site = next(iter(web.plan.throttled_sites))
    image = next(
        i for i in web.plan.images if web.plan.site(web.plan.hosts[i.host]) == site and not i.fault
    )
    host = web.plan.hosts[image.host]
    ca = str(web.ca_file)
    web.reset()

    def get() -> tuple[int, dict]:
        status, headers, _, _ = _get(host.ip, web.port, host.name, image.path, ca, host.scheme)
        return status, headers

    assert [get()[0] for _ in range(2)] == [200, 200]  # the burst
    status, headers = get()
    assert (status, headers["Retry-After"]) == (429, "2")
    assert get()[0] == 429  # inside the pause it just announced: counted
    time.sleep(2.2)
    assert get()[0] == 200
    assert web.stats()["throttle"][site] == {"windows": 1, "429": 2, "in_pause": 1}


# --------------------------------------------------------------------------- DNS in a namespace

_RESOLVE = """
import json, socket, sys
from dnslib import DNSRecord
out = {}
for name in sys.argv[2:]:
    try:
        out[name] = sorted({a[4][0] for a in socket.getaddrinfo(name, 443, socket.AF_INET)})
    except socket.gaierror as error:
        out[name] = error.errno
for qtype in ("A", "AAAA"):
    for tcp in (False, True):
        query = DNSRecord.question(sys.argv[2], qtype)
        reply = DNSRecord.parse(query.send(sys.argv[1], 53, tcp=tcp))
        out[f"{qtype} tcp={tcp}"] = [reply.header.rcode, [str(rr.rdata) for rr in reply.rr]]
print(json.dumps(out))
"""


@needs_netns
@pytest.mark.system
def test_dns_server_answers_and_fails_as_planned_for_a_real_resolver():
    zone = {
        "img.example.com": NameRecord("127.77.1.2", "ok", 300.0),
        "gone.example.org": NameRecord("127.77.1.3", "nxdomain", 100.0),
        "broken.example.net": NameRecord("127.77.1.4", "servfail"),
        "mute.example.de": NameRecord("127.77.1.5", "silent"),
    }
    address = "127.53.0.9"
    with netns.NetworkNamespace(nameserver=address, options="timeout:1 attempts:1") as ns:
        assert (Path("/etc/netns") / ns.name / "resolv.conf").exists()
        with DnsProcess(zone, address=address, netns=ns.name, servfail_ms=200) as dns:

            def resolve(*names: str) -> dict:
                cmd = ns.command([sys.executable, "-c", _RESOLVE, address, *names])
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
                assert done.returncode == 0, done.stderr
                return json.loads(done.stdout)

            first = resolve(*zone, "unknown.example.com")
            assert first["img.example.com"] == ["127.77.1.2"]
            assert first["gone.example.org"] == socket.EAI_NONAME
            assert first["unknown.example.com"] == socket.EAI_NONAME
            assert first["broken.example.net"] == socket.EAI_AGAIN  # SERVFAIL
            assert first["mute.example.de"] == socket.EAI_AGAIN  # no answer: glibc timed out
            assert first["A tcp=False"] == first["A tcp=True"] == [0, ["127.77.1.2"]]
            assert first["AAAA tcp=False"] == first["AAAA tcp=True"] == [0, []]  # NOERROR, none
            counts = dns.stats()
            assert counts["cold"] == 2  # only the first lookups of the two names waited
            assert counts["servfail"] >= 1 and counts["silent"] >= 1
            again = resolve("img.example.com", "gone.example.org")
            assert again["img.example.com"] == ["127.77.1.2"]
            assert dns.stats()["cold"] == 2  # answered from the cache
            dns.reset()  # a cold resolver again
            resolve("img.example.com")
            assert dns.stats()["cold"] == 1
            dns.set_mode(latency=True, faults=False)
            assert resolve("gone.example.org")["gone.example.org"] == ["127.77.1.3"]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert ns.name not in listed
    assert not (Path("/etc/netns") / ns.name).exists()


@needs_netns
def test_namespaces_are_removed_after_errors_and_when_their_maker_died():
    with pytest.raises(RuntimeError):
        with netns.NetworkNamespace(nameserver="127.53.0.1") as ns:
            raise RuntimeError("boom")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert ns.name not in listed and not (Path("/etc/netns") / ns.name).exists()
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = f"mmc4ns-{dead.pid}-1"
    subprocess.run(["ip", "netns", "add", orphan], check=True)
    try:
        assert orphan in netns.remove_stale()
    finally:
        netns.remove(orphan)
