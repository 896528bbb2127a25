"""Fixtures shared by the downloader tests."""

from __future__ import annotations

import pytest

from mmc4_assets_tests.downloader.local_server import LocalServer


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
