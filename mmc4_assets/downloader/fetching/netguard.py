"""Address policy: which hosts the image downloader may connect to.

The check runs on the address actually being connected (inside the urllib3 connection), so a
DNS answer that changes between a check and the connect (rebinding) cannot slip through, and
every redirect hop is checked the same way.
"""

from __future__ import annotations

import ipaddress
import socket

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError


class BlockedAddress(Exception):
    """The host resolves only to addresses we refuse (loopback, private, ...).

    Deliberately not an OSError, so urllib3 does not wrap it or treat it as a network failure.
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


def allowed_addresses(host: str, port: int, policy: AddressPolicy) -> list[tuple]:
    """Resolve ``host`` and keep only the addresses the policy allows.

    Raises BlockedAddress when the name resolves but nothing is allowed; socket.gaierror when it
    does not resolve.
    """
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    if policy.allow_private:
        return infos
    kept = [info for info in infos if policy.permits(info[4][0])]
    if not kept:
        shown = ", ".join(sorted({info[4][0] for info in infos}))
        raise BlockedAddress(f"{host} resolves to non-public address {shown}")
    return kept


def _connect_checked(conn: HTTPConnection, policy: AddressPolicy) -> socket.socket:
    """Resolve, check and connect to the first allowed address that answers."""
    try:
        infos = allowed_addresses(conn._dns_host, conn.port, policy)
    except socket.gaierror as error:
        raise NameResolutionError(conn.host, conn, error) from error
    last_error: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            for option in conn.socket_options or ():
                sock.setsockopt(*option)
            sock.settimeout(conn.timeout)
            sock.connect(address)
        except TimeoutError as error:
            sock.close()
            raise ConnectTimeoutError(conn, f"connect to {conn.host} timed out") from error
        except OSError as error:
            sock.close()
            last_error = error
            continue
        _notify(sock)
        return sock
    raise NewConnectionError(conn, f"Failed to establish a new connection: {last_error}")


_socket_hook = None


def _notify(sock: socket.socket) -> None:
    if _socket_hook is not None:
        _socket_hook(sock)


def set_socket_hook(hook) -> None:
    """Let the fetcher learn which socket each request uses (to enforce its per-image deadline).

    ``hook(sock)`` runs in the requesting thread on every new connect and every request.
    """
    global _socket_hook
    _socket_hook = hook


def guarded_pool_manager(policy: AddressPolicy, **kwargs) -> urllib3.PoolManager:
    """A PoolManager whose connections enforce the address policy on every connect."""

    class _Guarded:
        def _new_conn(self) -> socket.socket:
            return _connect_checked(self, policy)

        def request(self, *args, **kwargs):
            if self.sock is not None:
                _notify(self.sock)
            return super().request(*args, **kwargs)

    class _GuardedHTTPConnection(_Guarded, HTTPConnection):
        pass

    class _GuardedHTTPSConnection(_Guarded, HTTPSConnection):
        pass

    class _GuardedHTTPPool(HTTPConnectionPool):
        ConnectionCls = _GuardedHTTPConnection

    class _GuardedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = _GuardedHTTPSConnection

    manager = urllib3.PoolManager(**kwargs)
    manager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}
    return manager
