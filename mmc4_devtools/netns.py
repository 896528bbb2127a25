"""A throw-away Linux network namespace whose resolv.conf names a DNS server of our own.

Why: a downloader resolves names through the system (glibc's getaddrinfo reads
/etc/resolv.conf), so a benchmark or a test that wants names served by its own DNS server
(``dns_server``) must change what resolv.conf says, for those processes only. ``ip netns``
does exactly that: ``ip netns exec NAME cmd`` runs ``cmd`` in the namespace with every file of
/etc/netns/NAME bind-mounted over its /etc twin. The namespace has only its own loopback
(all of 127/8), so nothing run inside can reach anything but loopback. Needs root.

    with NetworkNamespace(nameserver="127.53.0.1") as ns:
        subprocess.run(ns.command(["getent", "hosts", "example.test"]))

The namespace and its /etc/netns folder are removed on exit, also after an error; namespaces
left by a process that died hard (``mmc4*-<pid>`` with no such process) are removed by the
next one made.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

ETC_NETNS = Path("/etc/netns")
_OURS = re.compile(r"^mmc4[a-z]*-(\d+)(?:-\d+)?$")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def available() -> str | None:
    """None when namespaces can be made here, else why not (for tests to skip on)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    return None


class NetworkNamespace:
    """``ip netns add`` + loopback up + resolv.conf naming ``nameserver``; removed on exit."""

    _made = 0

    def __init__(self, nameserver: str | None = None, prefix: str = "mmc4ns", options: str = ""):
        NetworkNamespace._made += 1
        self.name = f"{prefix}-{os.getpid()}-{NetworkNamespace._made}"
        self.nameserver = nameserver
        self.options = options  # resolv.conf options, e.g. "timeout:1 attempts:1" for tests
        self.created = False

    def create(self) -> NetworkNamespace:
        remove_stale()
        _ip("netns", "add", self.name)
        self.created = True
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
            if self.nameserver:
                folder = ETC_NETNS / self.name
                folder.mkdir(parents=True, exist_ok=True)
                # Without options, glibc's defaults (timeout:5 attempts:2): what users have.
                text = f"nameserver {self.nameserver}\n"
                text += f"options {self.options}\n" if self.options else ""
                (folder / "resolv.conf").write_text(text)
        except BaseException:
            self.remove()
            raise
        return self

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def remove(self) -> None:
        remove(self.name)
        self.created = False

    def __enter__(self) -> NetworkNamespace:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.remove()


def remove(name: str) -> None:
    """Delete namespace ``name`` and its /etc/netns folder; nothing if they are gone."""
    _ip("netns", "delete", name, check=False)
    shutil.rmtree(ETC_NETNS / name, ignore_errors=True)


def remove_stale() -> list[str]:
    """Remove our namespaces whose maker (the pid in the name) is no longer running."""
    listed = _ip("netns", "list", check=False).stdout.split("\n")
    names = {line.split()[0] for line in listed if line.strip()}
    if ETC_NETNS.is_dir():
        names |= {entry.name for entry in ETC_NETNS.iterdir()}
    stale = []
    for name in sorted(names):
        match = _OURS.match(name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            remove(name)
            stale.append(name)
    return stale
