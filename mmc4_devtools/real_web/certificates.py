"""TLS for the web: a throw-away CA and small server certificates written at start-up (by
``RealWeb``), and the SSLContexts the server children load from them."""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

from mmc4_devtools.real_web.plan import Host, Plan
from mmc4_devtools.real_web.sites import certificate_name


def certificate_groups(plan: Plan, per_certificate: int) -> dict[int, int]:
    """IP mode: HTTPS host index -> its certificate's number; consecutive hosts share one.

    Why share: a certificate with IP SANs cannot be chosen by SNI (clients send none for an
    IP literal), so each listener carries its own SSLContext; sharing keeps them few.
    """
    https = [host.index for host in plan.hosts if host.scheme == "https"]
    return {index: position // per_certificate for position, index in enumerate(https)}


def certificate_file(folder: Path, name: str) -> Path:
    """Names mode: the file of the certificate for ``name`` (a wildcard's for CDN names)."""
    digest = hashlib.sha1(certificate_name(name).encode()).hexdigest()[:16]
    return folder / f"name-{digest}.pem"


DEFAULT_SNI_NAME = "realweb.invalid"  # the certificate served to a client naming no known host


def write_certificates(plan: Plan, folder: Path, per_certificate: int) -> Path:
    """A throw-away CA and small ECDSA server certificates; returns the CA file.

    Names mode: one certificate per HTTPS host name (one wildcard per multi-name CDN), as real
    servers have, chosen by SNI. IP mode: IP SANs, ``per_certificate`` hosts each. Issuing
    one takes ~0.2 ms, so nothing is cached between runs.
    """
    import trustme

    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="mmc4_assets RealWeb throw-away CA")
    if plan.names:
        wanted = {certificate_name(h.name) for h in plan.hosts if h.scheme == "https"}
        for name in sorted(wanted | {DEFAULT_SNI_NAME}):
            pem = ca.issue_cert(name).private_key_and_cert_chain_pem
            pem.write_to_path(str(certificate_file(folder, name)))
    else:
        members: dict[int, list[str]] = {}
        for index, group in certificate_groups(plan, per_certificate).items():
            members.setdefault(group, []).append(plan.hosts[index].ip)
        for group, ips in members.items():
            pem = ca.issue_cert(*ips).private_key_and_cert_chain_pem
            pem.write_to_path(str(folder / f"server-{group}.pem"))
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return ca_file


def tls_contexts(
    plan: Plan, hosts: list[Host], certs: Path, per_certificate: int
) -> dict[int, ssl.SSLContext]:
    """HTTPS host index (of ``hosts``) -> the SSLContext its listener starts handshakes with.

    Names mode: one context for every listener, whose SNI callback switches to the
    certificate naming the host the client asked for (as a real server with many virtual
    hosts does). IP mode: clients send no SNI; each listener has its group's certificate.
    """
    https = [h for h in hosts if h.scheme == "https"]
    if not plan.names:
        groups = certificate_groups(plan, per_certificate)
        contexts: dict[int, ssl.SSLContext] = {}
        for host in https:
            group = groups[host.index]
            if group not in contexts:
                contexts[group] = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                contexts[group].load_cert_chain(certs / f"server-{group}.pem")
        return {host.index: contexts[groups[host.index]] for host in https}
    by_file: dict[Path, ssl.SSLContext] = {}
    for name in [DEFAULT_SNI_NAME, *(h.name for h in https)]:
        path = certificate_file(certs, name)
        if path not in by_file:
            by_file[path] = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            by_file[path].load_cert_chain(path)
    sni = {h.name: by_file[certificate_file(certs, h.name)] for h in https}

    def choose_certificate(ssl_object, server_name: str | None, context) -> None:
        chosen = sni.get((server_name or "").lower())
        if chosen is not None:
            ssl_object.context = chosen

    default = by_file[certificate_file(certs, DEFAULT_SNI_NAME)]
    default.sni_callback = choose_certificate
    return {host.index: default for host in https}
