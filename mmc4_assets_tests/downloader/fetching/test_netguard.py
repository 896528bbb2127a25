"""The address policy: which addresses the downloader may reach."""

from __future__ import annotations

import asyncio

import pytest

from mmc4_assets.downloader.fetching.netguard import AddressPolicy, BlockedAddress, check_literal
from mmc4_assets.downloader.fetching.resolver import GuardedResolver


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "100.64.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "not-an-ip",
    ],
)
def test_non_public_addresses_refused(address):
    assert not AddressPolicy().permits(address)
    assert AddressPolicy(allow_private=True).permits(address) or address == "not-an-ip"


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700::1111"])
def test_public_addresses_allowed(address):
    assert AddressPolicy().permits(address)


def test_allowed_networks_exception():
    policy = AddressPolicy(allowed_networks=("127.0.0.1/32",))
    assert policy.permits("127.0.0.1") and not policy.permits("127.0.0.2")


def resolve(host: str, policy: AddressPolicy) -> list:
    """``host``'s addresses as the HTTP client's connector gets them (GuardedResolver)."""

    async def run() -> list:
        resolver = GuardedResolver(policy, timeout=2.0)
        try:
            return await resolver.resolve(host, 80)
        finally:
            await resolver.close()

    return asyncio.run(run())


def test_resolution_is_checked():
    with pytest.raises(BlockedAddress):
        resolve("localhost", AddressPolicy())
    answer = resolve("localhost", AddressPolicy(allow_private=True))
    assert answer and {entry["host"] for entry in answer} == {"127.0.0.1"}


def test_ip_literals_are_checked():
    """The connector does not resolve IP-literal hosts: the client checks them on every hop."""
    for host in ("127.0.0.1", "[::1]", "169.254.169.254"):
        with pytest.raises(BlockedAddress):
            check_literal(host, AddressPolicy())
        check_literal(host, AddressPolicy(allow_private=True))
    check_literal("8.8.8.8", AddressPolicy())
    check_literal("localhost", AddressPolicy())  # a name: the resolver checks its answers
