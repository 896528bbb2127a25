"""Fixtures shared by the downloader tests: real servers on 127.0.0.x and a throw-away CA."""

from __future__ import annotations

import secrets
import ssl

import pytest
import trustme

from mmc4_assets_tests.support.local_server import LocalServer, SilentServer, ThrowawayCA


@pytest.fixture
def server():
    servers = []

    def make(routes, **kwargs):
        s = LocalServer(routes, **kwargs)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.system)])
def ledger_url(request, tmp_path) -> str:
    """A site ledger on SQLite (one machine) and on a real PostgreSQL (many)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.sqlite"
    server = request.getfixturevalue("postgres_server")
    return server.create_database(f"ledger_{secrets.token_hex(4)}").url


@pytest.fixture
def silent_server():
    servers = []

    def make(host: str = "127.0.0.1") -> SilentServer:
        s = SilentServer(host)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory) -> ThrowawayCA:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    bundle = tmp_path_factory.mktemp("ca") / "test-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return ThrowawayCA(bundle, context)
