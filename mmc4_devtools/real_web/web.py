"""The controller: ``RealWeb`` writes the certificates and the pool, starts the server children
(and, with names, the DNS server), hands out the URLs and what each should get, switches the
mode and reads the counters."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from mmc4_devtools.commanded import CommandedProcess
from mmc4_devtools.dns_server import DnsProcess
from mmc4_devtools.real_web.certificates import write_certificates
from mmc4_devtools.real_web.config import RealWebConfig
from mmc4_devtools.real_web.plan import PlannedImage, make_plan
from mmc4_devtools.real_web.pool import write_pool
from mmc4_devtools.real_web.standins import DOC_IMAGES, is_standin

_READY_TIMEOUT_S = 120.0


class RealWeb:
    """Start the web's server processes (and, with names, its DNS server), hand out its URLs
    and expectations, switch its mode, read its counters.

    With names, clients must resolve through the DNS server at ``dns_address``:``dns_port``;
    run them in a namespace whose resolv.conf names it (``netns.NetworkNamespace``).
    """

    def __init__(
        self,
        config: RealWebConfig | None = None,
        *,
        processes: int = 1,
        pool_cache: str | os.PathLike | None = None,
    ):
        self.config = config or RealWebConfig()
        self.processes = max(1, processes)
        self.pool_cache = Path(pool_cache) if pool_cache else None
        self.plan = make_plan(self.config)
        self.port = 0
        self.workdir: Path | None = None
        self._servers: list[CommandedProcess] = []
        self.dns: DnsProcess | None = None
        self.startup: list[dict] = []

    @property
    def ca_file(self) -> Path:
        assert self.workdir is not None, "start the web first"
        return self.workdir / "certs" / "ca.pem"

    @property
    def dns_port(self) -> int | None:
        return self.dns.port if self.dns else None

    def start(self) -> RealWeb:
        if self._servers:
            return self
        self.workdir = Path(tempfile.mkdtemp(prefix="mmc4-realweb-"))
        try:
            write_certificates(self.plan, self.workdir / "certs", self.config.hosts_per_certificate)
            pool = self.workdir / "pool"
            if self.pool_cache:
                write_pool(self.config, self.pool_cache)
                pool.symlink_to(self.pool_cache.resolve(), target_is_directory=True)
            else:
                write_pool(self.config, pool)
            if self.config.names:
                self.dns = DnsProcess(
                    self.plan.zone(),
                    address=self.config.dns_address,
                    port=self.config.dns_port,
                    servfail_ms=self.config.servfail_ms,
                    max_runtime_s=self.config.max_runtime_s,
                )
                self.dns.set_mode(latency=self.config.latency, faults=self.config.faults)
            for part in range(self.processes):
                self._servers.append(CommandedProcess(self._command_line(part), _READY_TIMEOUT_S))
                self.startup.append(self._servers[-1].ready)
                self.port = self.port or self.startup[0]["port"]
        except BaseException:
            self.stop()
            raise
        return self

    def _command_line(self, part: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mmc4_devtools.real_web",
            "--serve",
            json.dumps(asdict(self.config)),
            str(self.workdir),
            str(self.port),
            f"{part}/{self.processes}",
        ]

    def _command(self, line: str) -> list[dict]:
        for server in self._servers:
            server.send(line)
        return [server.read(30.0) for server in self._servers]

    def set_mode(self, *, latency: bool, faults: bool) -> None:
        """Switch every server process (and the DNS server); the URLs stay the same."""
        self._command(f"set latency={int(latency)} faults={int(faults)}")
        if self.dns:
            self.dns.set_mode(latency=latency, faults=faults)

    def reset(self) -> None:
        """Forget request counts and in-flight maxima (flaky hosts fail again, latency draws
        repeat) and empty the DNS server's cache: one per run."""
        self._command("reset")
        if self.dns:
            self.dns.reset()

    def stats(self) -> dict:
        """Requests served, CPU seconds of the web (servers and DNS), and per site and host:
        the most requests in flight at once since the last reset (``max_in_flight_site``,
        ``max_in_flight_host``), robots.txt requests, requests for images robots.txt closes to
        us (``disallowed_requests``), and per throttled site its 429s, pause windows and
        requests received inside an announced pause (``throttle``). Hosts are keyed as URLs
        name them (name or IP), sites by registrable domain (IP mode: the IP)."""
        replies = self._command("stats")
        merged: dict = {"requests": sum(r["requests"] for r in replies)}
        for key in (
            "max_in_flight_site",
            "max_in_flight_host",
            "robots_requests",
            "disallowed_requests",
            "throttle",
            "peak_site_requests",
        ):
            merged[key] = {k: v for r in replies for k, v in r[key].items()}  # disjoint sites
        site_max = merged["max_in_flight_site"]
        merged["max_in_flight_any_site"] = max(site_max.values(), default=0)
        merged["max_in_flight_any_host"] = max(merged["max_in_flight_host"].values(), default=0)
        merged["cpu_s"] = sum(server.cpu_seconds() for server in self._servers)
        if self.dns:
            merged["dns"] = self.dns.stats()
            merged["cpu_s"] += merged["dns"]["cpu_s"]
        return merged

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
        self._servers = []
        if self.dns:
            self.dns.stop()
            self.dns = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RealWeb:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, image: PlannedImage) -> str:
        return self.plan.url(image, self.port)

    def entries(self) -> list[dict]:
        """One dict per image: image_name, url, expect (with faults on), host (as the URL
        names it), site, host_kind, dns (the name's fate), robots_disallowed, fault, standin
        (its stand-in kind, or None), doc and index (where refs put it: image i is
        ``i // DOC_IMAGES``, ``i % DOC_IMAGES``); then, with stand-ins, one more per reuse of
        an ok image's URL (``reused``: True), each the only image of a document of its own."""
        out = []
        for image in self.plan.images:
            host = self.plan.hosts[image.host]
            name = hashlib.sha1(f"{host.ip}{image.path}".encode()).hexdigest()[:16]
            out.append(
                {
                    "image_name": name + "." + image.path.rsplit(".", 1)[1],
                    "url": self.url(image),
                    "expect": image.expect,
                    "host": self.plan.authority(host),
                    "site": self.plan.site(host),
                    "host_kind": host.kind,
                    "dns": host.dns if self.plan.names else "ok",
                    "robots_disallowed": image.disallowed,
                    "fault": image.fault,
                    "standin": image.fault if is_standin(image.fault) else None,
                    "doc": image.index // DOC_IMAGES,
                    "index": image.index % DOC_IMAGES,
                }
            )
        next_doc = -(-len(out) // DOC_IMAGES)
        for number, (image, _) in enumerate(self.plan.reuses):
            out.append({**out[image], "doc": next_doc + number, "index": 0, "reused": True})
        return out
