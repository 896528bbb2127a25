"""HTTPS downloads, and the ca_bundle setting, against a real TLS server with a throw-away CA."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmc4_assets.downloader import CaBundleError, DownloadSettings, ImageRef, download_shard
from mmc4_assets.resources import ImageDownloader
from mmc4_assets_tests.support.local_server import image_bytes, send

BIG = image_bytes(1600, 1200)
SMALL = image_bytes(400, 300)
SETTINGS = DownloadSettings(
    allow_private_networks=True, connect_timeout=2.0, read_timeout=2.0, total_deadline=5.0
)


@pytest.fixture
def https_host(server, test_ca):
    routes = {f"/{i}.jpg": (lambda h, i=i: send(h, 200, BIG if i % 2 else SMALL)) for i in range(6)}
    return server(routes, tls=test_ca.server_context)


def refs_on(host) -> list[ImageRef]:
    return [ImageRef(0, i, f"{i}.jpg", host.url(f"/{i}.jpg")) for i in range(6)]


def test_https_with_the_ca_bundle(https_host, test_ca, tmp_path: Path):
    settings = DownloadSettings(**{**vars(SETTINGS), "ca_bundle": str(test_ca.bundle)})
    table = download_shard(refs_on(https_host), data_dir=tmp_path, shard=0, settings=settings)
    assert (table.outcome == "ok").all() and https_host.url("/").startswith("https://")
    assert list(table.width) == [400, 800, 400, 800, 400, 800]
    assert (tmp_path / "images/0/0.jpg").read_bytes() == SMALL


def test_https_without_the_ca_bundle_fails_verification(https_host, tmp_path: Path):
    table = download_shard(refs_on(https_host), data_dir=tmp_path, shard=0, settings=SETTINGS)
    assert (table.outcome == "connection_error").all()
    assert table["error"].str.contains("certificate", case=False).all()
    assert https_host.fetches() == 0  # no request went out over an unverified connection
    assert not any((tmp_path / "images/0").iterdir())


def test_ca_bundle_from_the_environment(https_host, test_ca, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MMC4_CA_BUNDLE", str(test_ca.bundle))
    monkeypatch.setenv("MMC4_ALLOW_PRIVATE_NETWORKS", "1")
    settings = ImageDownloader().settings()
    assert settings.ca_bundle == str(test_ca.bundle)
    table = download_shard(refs_on(https_host), data_dir=tmp_path, shard=0, settings=settings)
    assert (table.outcome == "ok").all()
    # The resource field wins over the environment.
    assert ImageDownloader(ca_bundle="/x.pem").settings().ca_bundle == "/x.pem"


@pytest.mark.parametrize("problem", ["missing", "not_pem", "directory"])
def test_unusable_ca_bundle_stops_the_run_before_any_request(https_host, tmp_path: Path, problem):
    bundle = {
        "missing": tmp_path / "nope.pem",
        "not_pem": tmp_path / "junk.pem",
        "directory": tmp_path,
    }[problem]
    if problem == "not_pem":
        bundle.write_text("this is not a certificate\n")
    settings = DownloadSettings(**{**vars(SETTINGS), "ca_bundle": str(bundle)})
    with pytest.raises(CaBundleError, match=str(bundle)):
        download_shard(refs_on(https_host), data_dir=tmp_path / "d", shard=0, settings=settings)
    assert https_host.fetches() == 0
    assert not (tmp_path / "d").exists()
