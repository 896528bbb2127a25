"""The server of one child process: its share of the hosts (whole sites) on one asyncio loop;
listeners, connections, latency, the mode, and the per-site and per-host counts."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from mmc4_devtools.real_web.certificates import tls_contexts
from mmc4_devtools.real_web.config import RealWebConfig
from mmc4_devtools.real_web.plan import Host, make_plan
from mmc4_devtools.real_web.pool import write_pool
from mmc4_devtools.real_web.responses import Responses
from mmc4_devtools.real_web.throttle import Throttle

_CTYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif"}


class Server(Responses):
    """Serves this process's share of the hosts (whole sites); one asyncio loop."""

    def __init__(self, config: RealWebConfig, workdir: Path, part: int, parts: int):
        self.config = config
        self.plan = make_plan(config)
        self.workdir = workdir
        site_number = {site: k for k, site in enumerate(self.plan.sites)}
        self.hosts = [h for h in self.plan.hosts if site_number[self.plan.site(h)] % parts == part]
        formats = self.plan.pool_formats
        self.pool = [p.read_bytes() for p in write_pool(config, workdir / "pool")]
        self.ctypes = [_CTYPES[fmt] for fmt in formats]
        self.latency = config.latency
        self.faults = config.faults
        self.port = 0
        self.requests = 0
        self.counts: Counter[tuple[int, str]] = Counter()
        self.listeners: dict[int, asyncio.base_events.Server] = {}
        self.connections: set[asyncio.StreamWriter] = set()
        self.holding: set[asyncio.StreamWriter] = set()  # connections to silent hosts
        self.stopped = asyncio.Event()
        self.tls = tls_contexts(
            self.plan, self.hosts, workdir / "certs", config.hosts_per_certificate
        )
        self._new_counters()

    def _new_counters(self) -> None:
        # Requests in flight (request head received .. response sent), now and at most, by key.
        self.in_flight: Counter[str] = Counter()
        # writer -> the request it answers: (in-flight keys, its connection's reader (to see
        # the client leave), path, when its head came)
        self.answering: dict = {}
        self.max_site: Counter[str] = Counter()
        self.max_host: Counter[str] = Counter()
        self.peak_site_requests: dict[str, list] = {}  # site -> its requests when at its most
        self.robots_requests: Counter[str] = Counter()
        self.disallowed_requests: Counter[str] = Counter()
        self.throttles = {
            site: Throttle(self.config.throttle_burst, self.config.throttle_retry_after_s)
            for site in self.plan.throttled_sites
        }

    # listeners ---------------------------------------------------------------------------
    async def listen_all(self, port: int) -> int:
        """Bind every host on one port (0: pick one free on all of them)."""
        for _ in range(20):
            try:
                chosen = port
                for host in self.hosts:
                    await self._listen(host, chosen)
                    if chosen == 0:
                        chosen = self.listeners[host.index].sockets[0].getsockname()[1]
                self.port = chosen
                break
            except OSError:
                await self._close_listeners(list(self.listeners))
                if port:
                    raise
        else:
            raise OSError("no port free on every host address")
        await self._apply_mode()
        self.sweeper = asyncio.ensure_future(self._sweep_left())
        return self.port

    async def _sweep_left(self) -> None:
        """Every few ms, stop counting requests whose client has closed its side (it read what
        it wanted, or gave up): the per-site counts are the client's, not a response the server
        is still writing to nobody."""
        while not self.stopped.is_set():
            await asyncio.sleep(0.003)
            for writer in [w for w in self.answering if self._client_left(w)]:
                self._answered(writer)

    async def _listen(self, host: Host, port: int) -> None:
        async def handle(reader, writer, host=host):
            await self._connection(host, reader, writer)

        holding = host.kind == "silent" and self.faults
        self.listeners[host.index] = await asyncio.start_server(
            handle,
            host.ip,
            port,
            ssl=None if holding else self.tls.get(host.index),
            backlog=1024,
            reuse_address=True,
        )

    async def _close_listeners(self, indexes: list[int]) -> None:
        for index in indexes:
            server = self.listeners.pop(index, None)
            if server is not None:
                server.close()

    async def _apply_mode(self) -> None:
        """Dead hosts listen only without faults; silent ones hold or serve by mode."""
        for host in self.hosts:
            if host.kind == "live":
                continue
            await self._close_listeners([host.index])
            if host.kind == "silent" or not self.faults:
                await self._listen(host, self.port)

    async def set_mode(self, latency: bool, faults: bool) -> None:
        changed = faults != self.faults
        self.latency, self.faults = latency, faults
        if changed:
            for writer in list(self.holding):
                writer.transport.abort()
            await self._apply_mode()

    def reset(self) -> None:
        self.counts.clear()
        self.requests = 0
        self._new_counters()

    def stats(self) -> dict:
        return {
            "requests": self.requests,
            "connections": len(self.connections),
            "max_in_flight_site": dict(self.max_site),
            "max_in_flight_host": dict(self.max_host),
            "peak_site_requests": {
                site: self.peak_site_requests.get(site)
                for site, _ in Counter(self.max_site).most_common(5)
            },
            "robots_requests": dict(self.robots_requests),
            "disallowed_requests": dict(self.disallowed_requests),
            "throttle": {site: dict(t.counts) for site, t in self.throttles.items()},
        }

    async def stop(self) -> None:
        await self._close_listeners(list(self.listeners))
        for writer in list(self.connections):
            writer.transport.abort()
        self.stopped.set()

    # connections -------------------------------------------------------------------------
    async def _connection(self, host: Host, reader, writer) -> None:
        self.connections.add(writer)
        try:
            if host.kind == "silent" and self.faults:
                self.holding.add(writer)
                await self._hold(reader)
                return
            first = True
            while not self.stopped.is_set():
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30.0)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                    return
                method, path, keep_alive = _parse_request(head)
                if method is None:
                    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    return
                self.requests += 1
                key = (host.index, path)
                self.counts[key] += 1
                keys = ("s:" + self.plan.site(host), "h:" + self.plan.authority(host))
                # A request stops counting once its last byte is handed to the socket (_paced),
                # before the flow-control wait: the client may already be sending its next one.
                self.answering[writer] = (keys, reader, path, time.monotonic())
                self._enter(keys)
                try:
                    throttle = self.throttles.get(self.plan.site(host)) if self.faults else None
                    limited = (
                        throttle is not None
                        and path != "/robots.txt"  # never throttled: its status means too much
                        and throttle.received(time.monotonic())
                    )
                    if self.latency:
                        delay = self._latency_s(host, path, self.counts[key])
                        await asyncio.sleep(delay + self.config.connect_ms / 1000 * first)
                    first = False
                    if limited:
                        wait = {"Retry-After": str(throttle.retry_after(time.monotonic()))}
                        page = b"slow down\n"
                        keep = await self._send(writer, method, 429, page, "text/plain", wait)
                    else:
                        keep = await self._respond(
                            host, method, path, self.counts[key], writer, reader
                        )
                    await writer.drain()
                finally:
                    self._answered(writer)
                if not (keep and keep_alive):
                    return
        except (OSError, RuntimeError):  # the client hung up (uvloop: RuntimeError on write)
            return
        except asyncio.CancelledError:  # the loop is shutting down: nothing to tell
            return
        finally:
            self.connections.discard(writer)
            self.holding.discard(writer)
            if self.stopped.is_set():
                writer.transport.abort()
            else:
                writer.close()

    def _client_left(self, writer) -> bool:
        """The client closed its side (it read what it wanted, or gave up)."""
        request = self.answering.get(writer)
        return request is not None and request[1].at_eof()

    def _answered(self, writer) -> None:
        request = self.answering.pop(writer, None)
        if request is not None:
            self._leave(request[0])

    def _enter(self, keys: tuple[str, str]) -> None:
        site, host = keys
        for key in keys:
            self.in_flight[key] += 1
        if self.in_flight[site] > self.max_site[site[2:]]:
            self.max_site[site[2:]] = self.in_flight[site]
            now = time.monotonic()
            self.peak_site_requests[site[2:]] = sorted(  # which requests, and since when
                (round(now - since, 3), path)
                for (keys, _, path, since) in self.answering.values()
                if keys[0] == site
            )
        self.max_host[host[2:]] = max(self.max_host[host[2:]], self.in_flight[host])

    def _leave(self, keys: tuple[str, str]) -> None:
        for key in keys:
            self.in_flight[key] -= 1

    async def _hold(self, reader) -> None:
        """Accept and say nothing: read what the client sends until it gives up (or we stop)."""
        deadline = asyncio.get_running_loop().time() + self.config.stall_seconds
        while not self.stopped.is_set():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            try:
                if not await asyncio.wait_for(reader.read(65536), left):
                    return
            except TimeoutError:
                return

    def _latency_s(self, host: Host, path: str, count: int) -> float:
        """Log-normal, drawn from (host, path, request number): every contender sees the same."""
        draw = random.Random(f"{self.config.seed}:{host.index}:{path}:{count}").gauss(0, 1)
        ms = self.config.latency_median_ms * math.exp(self.config.latency_sigma * draw)
        return min(ms, self.config.latency_cap_ms) / 1000


def _parse_request(head: bytes) -> tuple[str | None, str, bool]:
    """(method, path, keep-alive) of a request head; method None when unparsable."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None, "", False
    method, target, version = parts
    connection = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "connection":
            connection = value.strip().lower()
    keep_alive = version == "HTTP/1.1" and connection != "close"
    return method, urlsplit(target).path, keep_alive
