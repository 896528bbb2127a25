"""Address policy: which hosts the image downloader may connect to.

The check runs on the addresses the client actually connects to: host names go through
resolver.GuardedResolver, whose filtered answer is all the connector ever sees (so a DNS answer
that changes between a check and the connect cannot slip through), and IP-literal hosts, which
the connector does not resolve, are checked by ``check_literal`` on every hop, redirects
included.
"""

from __future__ import annotations

import ipaddress


class BlockedAddress(Exception):
    """The host resolves only to addresses we refuse (loopback, private, ...).

    Deliberately not an OSError, so the HTTP client does not wrap it as a network failure.
    """


def is_public_address(address: str) -> bool:
    """True when ``address`` is a globally routable unicast IP."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


class AddressPolicy:
    """Public addresses only, unless private ones are allowed wholesale or by network."""

    def __init__(self, allow_private: bool = False, allowed_networks: tuple[str, ...] = ()):
        self.allow_private = allow_private
        self.allowed_networks = tuple(ipaddress.ip_network(n) for n in allowed_networks)

    def permits(self, address: str) -> bool:
        if self.allow_private or is_public_address(address):
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in network for network in self.allowed_networks)


def ip_literal(host: str) -> str | None:
    """``host`` as an IP address string when it is one (brackets stripped), else None."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(bare.split("%", 1)[0]))
    except ValueError:
        return None


def check_literal(host: str, policy: AddressPolicy) -> None:
    """Raise BlockedAddress when ``host`` is an IP literal the policy refuses."""
    address = ip_literal(host)
    if address is not None and not policy.permits(address):
        raise BlockedAddress(f"{host} is a non-public address")
