"""A loopback DNS server that answers like a recursive resolver on the real web, slowness included.

Why: the real web behind a shard is all names, from a 2019 URL list. A name's first lookup
costs a recursive resolver a round trip or several (tens to hundreds of ms, sometimes seconds),
then it is cached; some names no longer exist (NXDOMAIN), some name servers fail (SERVFAIL,
late) and some never answer. A downloader that resolves badly (one blocking lookup per request,
a small thread pool, no cache) is slow there and fast on a web of IP literals. This server gives
a benchmark or a test that web, over UDP and TCP, for every ordinary resolver client
(glibc's getaddrinfo included) pointed at it by ``resolv.conf`` (see ``netns``).

Each name of the zone has a fate, its address and the latency of its first lookup:

- ``ok``: after the first lookup's latency (every query for the name waits until then), A
  queries get the address (TTL 300) and answers come at once; AAAA and other types get NOERROR
  with no record, as for the many real names without IPv6.
- ``nxdomain``: the same latency, then NXDOMAIN (cached like an answer).
- ``servfail``: SERVFAIL after ``servfail_ms``, on every query (a resolver retries a broken
  upstream rather than caching its failure for long).
- ``silent``: no answer ever (glibc gives up after its timeout x attempts, 5 s x 2 by default).

Names outside the zone get NXDOMAIN at once. ``set latency=0`` answers every query at once;
``set faults=0`` answers every zone name. ``reset`` empties the cache (each contender of a
benchmark meets the same cold resolver).

    with DnsProcess({"a.example": NameRecord("127.77.0.1", "ok", 120.0)}, netns=ns.name) as dns:
        subprocess.run(ns.command(["getent", "ahostsv4", "a.example"]))
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from dnslib import QTYPE, RCODE, RR, A, DNSError, DNSRecord

from mmc4_devtools.commanded import CommandedProcess, reply, serve_commands

FATES = ("ok", "nxdomain", "servfail", "silent")
DEFAULT_ADDRESS = "127.53.0.1"  # away from the 127.0.0.x other tools use and 127.77/16 hosts


@dataclass(frozen=True)
class NameRecord:
    address: str
    fate: str = "ok"
    first_ms: float = 0.0  # latency of the first lookup (a recursive resolver's cold cache)


class Resolver:
    """Turns a query's bytes into the reply's bytes (None: stay silent), as planned per name."""

    def __init__(self, zone: dict[str, NameRecord], servfail_ms: float = 1500.0, ttl: int = 300):
        self.zone = {name.lower().rstrip("."): record for name, record in zone.items()}
        self.servfail_ms = servfail_ms
        self.ttl = ttl
        self.latency = True
        self.faults = True
        self.ready_at: dict[str, float] = {}  # name -> when its first lookup completes
        self.counts: Counter[str] = Counter()

    def reset(self) -> None:
        self.ready_at.clear()
        self.counts.clear()

    async def answer(self, data: bytes) -> bytes | None:
        try:
            request = DNSRecord.parse(data)
        except (DNSError, ValueError, IndexError):
            self.counts["unparsable"] += 1
            return None
        if request.header.qr or not request.questions:
            return None
        question = request.q
        name = str(question.qname).rstrip(".").lower()
        record = self.zone.get(name)
        response = request.reply()  # id, question, QR, AA and RA set
        self.counts["queries"] += 1
        self.counts[f"name:{name}"] += 1
        if record is None:
            response.header.rcode = RCODE.NXDOMAIN
            self.counts["unknown"] += 1
            return response.pack()
        fate = record.fate if self.faults else "ok"
        if fate == "silent":
            self.counts["silent"] += 1
            return None
        if fate == "servfail":
            if self.latency:
                await asyncio.sleep(self.servfail_ms / 1000)
            response.header.rcode = RCODE.SERVFAIL
            self.counts["servfail"] += 1
            return response.pack()
        if self.latency:
            now = time.monotonic()
            ready = self.ready_at.setdefault(name, now + record.first_ms / 1000)
            if ready > now:
                self.counts["cold"] += 1
                await asyncio.sleep(ready - now)
        if fate == "nxdomain":
            response.header.rcode = RCODE.NXDOMAIN
            self.counts["nxdomain"] += 1
        elif question.qtype == QTYPE.A:
            response.add_answer(RR(question.qname, QTYPE.A, rdata=A(record.address), ttl=self.ttl))
            self.counts["a"] += 1
        else:
            self.counts["empty"] += 1  # AAAA and the rest: NOERROR, no record
        return response.pack()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver):
        self.resolver = resolver
        self.tasks: set[asyncio.Task] = set()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        task = asyncio.ensure_future(self._answer(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, data: bytes, addr) -> None:
        out = await self.resolver.answer(data)
        if out is not None and not self.transport.is_closing():
            self.transport.sendto(out, addr)


async def _tcp(resolver: Resolver, reader, writer) -> None:
    """DNS over TCP: two-byte length, message; one connection may carry several queries."""
    try:
        while True:
            size = int.from_bytes(await reader.readexactly(2), "big")
            out = await resolver.answer(await reader.readexactly(size))
            if out is None:
                continue  # silent: the client's timeout decides
            writer.write(len(out).to_bytes(2, "big") + out)
            await writer.drain()
    except (asyncio.IncompleteReadError, OSError):
        pass
    finally:
        writer.close()


async def serve(resolver: Resolver, address: str, port: int, max_runtime_s: float = 3600.0) -> None:
    """Listen on UDP and TCP ``address:port`` (0: a free one), say ready, obey stdin commands."""
    loop = asyncio.get_running_loop()
    tcp = await asyncio.start_server(lambda r, w: _tcp(resolver, r, w), address, port)
    port = tcp.sockets[0].getsockname()[1]
    udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(resolver), local_addr=(address, port))
    stopped = asyncio.Event()

    async def stop() -> None:
        stopped.set()

    async def set_mode(options: dict[str, str]) -> dict:
        resolver.latency = options.get("latency", str(int(resolver.latency))) == "1"
        resolver.faults = options.get("faults", str(int(resolver.faults))) == "1"
        return {"latency": resolver.latency, "faults": resolver.faults}

    async def reset(options: dict[str, str]) -> dict:
        resolver.reset()
        return {}

    async def stats(options: dict[str, str]) -> dict:
        return {"counts": dict(resolver.counts)}

    serve_commands(loop, {"set": set_mode, "reset": reset, "stats": stats}, stop)
    loop.call_later(max_runtime_s, stopped.set)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    reply({"ready": True, "address": address, "port": port, "names": len(resolver.zone)})
    await stopped.wait()
    udp.close()
    tcp.close()


class DnsProcess:
    """Run the server in a child process, inside network namespace ``netns`` when given."""

    def __init__(
        self,
        zone: dict[str, NameRecord],
        *,
        address: str = DEFAULT_ADDRESS,
        port: int = 53,
        servfail_ms: float = 1500.0,
        netns: str | None = None,
        max_runtime_s: float = 3600.0,
    ):
        self._zone_file = tempfile.NamedTemporaryFile("w", prefix="mmc4-zone-", suffix=".json")
        json.dump({name: asdict(record) for name, record in zone.items()}, self._zone_file)
        self._zone_file.flush()
        prefix = ["ip", "netns", "exec", netns] if netns else []
        cmd = [
            *prefix,
            sys.executable,
            "-m",
            "mmc4_devtools.dns_server",
            self._zone_file.name,
            f"--address={address}",
            f"--port={port}",
            f"--servfail-ms={servfail_ms}",
            f"--max-runtime-s={max_runtime_s}",
        ]
        try:
            self.process = CommandedProcess(cmd)
        except BaseException:
            self._zone_file.close()
            raise
        self.address, self.port = address, self.process.ready["port"]

    def set_mode(self, *, latency: bool, faults: bool) -> None:
        self.process.command(f"set latency={int(latency)} faults={int(faults)}")

    def reset(self) -> None:
        self.process.command("reset")

    def stats(self) -> dict:
        return {**self.process.command("stats")["counts"], "cpu_s": self.process.cpu_seconds()}

    def stop(self) -> None:
        self.process.stop()
        self._zone_file.close()

    def __enter__(self) -> DnsProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def load_zone(path: str | Path) -> dict[str, NameRecord]:
    return {name: NameRecord(**raw) for name, raw in json.loads(Path(path).read_text()).items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zone", help="JSON: name -> {address, fate, first_ms}")
    parser.add_argument("--address", default=DEFAULT_ADDRESS)
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--servfail-ms", type=float, default=1500.0)
    parser.add_argument("--max-runtime-s", type=float, default=3600.0)
    args = parser.parse_args(argv)
    resolver = Resolver(load_zone(args.zone), args.servfail_ms)
    asyncio.run(serve(resolver, args.address, args.port, args.max_runtime_s))


if __name__ == "__main__":
    main()
