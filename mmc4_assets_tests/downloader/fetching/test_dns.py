"""Names through a real DNS server on loopback, in a network namespace of the test's own (root).

The namespace's resolv.conf names the server (mmc4_devtools.dns_server), so the engine
resolves exactly as on a user's machine (c-ares reads resolv.conf); the images are served inside
the namespace too, on its own loopback.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmc4_devtools import netns
from mmc4_devtools.dns_server import DnsProcess, NameRecord

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(netns.available() is not None, reason=str(netns.available())),
]
DNS = "127.53.0.7"
ZONE = {
    "img.pics.test": NameRecord("127.0.0.1", "ok", 300.0),  # a slow first lookup
    "gone.pics.test": NameRecord("127.0.0.1", "nxdomain", 50.0),
    "broken.pics.test": NameRecord("127.0.0.1", "servfail"),
    "mute.pics.test": NameRecord("127.0.0.1", "silent"),
    "inside.pics.test": NameRecord("10.1.2.3", "ok", 10.0),  # a private address: refused
}
SETTINGS = {
    # Only the test's own server is reachable: 127.0.0.1, not 10.0.0.0/8.
    "allowed_networks": ["127.0.0.1/32"],
    "connect_timeout": 1.0,
    "read_timeout": 2.0,
    "total_deadline": 20.0,
    "backoff_base": 0.05,
    "backoff_max": 0.1,
    "fetch_processes": 1,
    "standin_min_urls": 0,  # one picture under many URLs: not a stand-in (test_standins_run.py)
}


def test_names_resolve_once_fail_fast_and_stay_within_the_address_policy(tmp_path):
    images = {"img.pics.test": 20, "gone.pics.test": 10, "broken.pics.test": 10,
              "mute.pics.test": 10, "inside.pics.test": 5}  # fmt: skip
    spec = {
        "names": images,
        "settings": SETTINGS,
        "data_dir": str(tmp_path / "data"),
        "result": str(tmp_path / "result.json"),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    with netns.NetworkNamespace(nameserver=DNS, options="timeout:1 attempts:1") as ns:
        with DnsProcess(ZONE, address=DNS, netns=ns.name, servfail_ms=100) as dns:
            probe = ns.command(
                [
                    sys.executable,
                    "-m",
                    "mmc4_assets_tests.support.dns_probe",
                    str(tmp_path / "spec.json"),
                ]
            )
            done = subprocess.run(probe, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr[-3000:]
            counts = dns.stats()
    result = json.loads((tmp_path / "result.json").read_text())
    rows, requests = result["rows"], result["requests_by_host"]
    # A good name: every image, its name looked up once for twenty requests at once.
    assert [outcome for outcome, _, _ in rows["img.pics.test"]] == ["ok"] * 20
    # One lookup (A and AAAA; c-ares may ask once more) shared by the twenty requests.
    assert counts["name:img.pics.test"] <= 4
    # NXDOMAIN: kept for the run, the host's images end at once, never retried.
    gone = rows["gone.pics.test"]
    assert {o for o, _, _ in gone} == {"connection_error"}
    assert all("does not resolve" in e for _, e, _ in gone) and sum(a for _, _, a in gone) <= 1
    # SERVFAIL and silence: retryable failures that say why, the breaker ending the rest.
    for name, why in (("broken.pics.test", "lookup failed"), ("mute.pics.test", "no answer")):
        failed = rows[name]
        assert {o for o, _, _ in failed} == {"connection_error"}, failed
        assert any(why in e for _, e, _ in failed), failed
        assert any("host skipped: 3 failed name lookups" in e for _, e, _ in failed), failed
    # A name whose answer is a private address: refused, never connected to.
    assert {o for o, _, _ in rows["inside.pics.test"]} == {"blocked"}
    assert set(requests) == {"img.pics.test"}  # the only host any request reached
    assert counts["name:gone.pics.test"] <= 4  # looked up once, then kept for the run
