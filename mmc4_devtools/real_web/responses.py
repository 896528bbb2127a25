"""What each request gets: the image, or its fault acted out on the wire (statuses, hotlink
pages, truncated and stalled bodies, redirects), robots.txt, and bodies paced at the web's
rate."""

from __future__ import annotations

import asyncio
from collections import Counter
from http import HTTPStatus

from mmc4_devtools.loopback_web import bomb_png, corrupt_jpeg
from mmc4_devtools.real_web.config import RealWebConfig
from mmc4_devtools.real_web.faults import OVERSIZE_BYTES, ROBOTS_5XX_STATUS
from mmc4_devtools.real_web.plan import Host, Plan
from mmc4_devtools.real_web.pool import served_body
from mmc4_devtools.real_web.sites import ROBOTS_HTML
from mmc4_devtools.real_web.standins import REMOVED_HOST, REMOVED_PATH, is_standin, standin_body


class Responses:
    """The responding half of ``Server`` (a mixin): it reads the server's plan, pool, mode and
    counters, and calls its request bookkeeping (``_answered``, ``_client_left``, ``_hold``)."""

    config: RealWebConfig
    plan: Plan
    pool: list[bytes]
    ctypes: list[str]
    port: int
    latency: bool
    faults: bool
    robots_requests: Counter[str]
    disallowed_requests: Counter[str]

    async def _robots(self, host: Host, method: str, writer) -> bool:
        self.robots_requests[self.plan.authority(host)] += 1
        kind = host.robots if self.faults else "none"
        if kind == "file":
            text = self.plan.robots_text(host).encode()
            return await self._send(writer, method, 200, text, "text/plain")
        if kind == "html":
            return await self._send(writer, method, 200, ROBOTS_HTML, "text/html")
        if kind == "5xx":
            page = b"<html><body>Service Unavailable</body></html>"
            return await self._send(writer, method, ROBOTS_5XX_STATUS, page, "text/html")
        return await self._send(writer, method, 404, b"<html>not found</html>", "text/html")

    async def _respond(
        self, host: Host, method: str, path: str, count: int, writer, reader
    ) -> bool:
        """Send the ``count``-th response to this path; False when the connection must close."""
        if path == "/robots.txt":
            return await self._robots(host, method, writer)
        hops = None
        if path.startswith("/r/"):  # a redirect hop: /r/{hops left}/{image path}
            _, _, left, rest = path.split("/", 3)
            hops, path = int(left) if left.isdigit() else 0, "/" + rest
        image = self.plan.by_path.get((host.index, path))
        if image is None and path == REMOVED_PATH and host.name == REMOVED_HOST:
            body, ctype = standin_body("removed", host.site)  # imgur's stand-in, always there
            return await self._send(writer, method, 200, body, ctype)
        if image is None:
            return await self._send(writer, method, 404, b"<html>not found</html>", "text/html")
        if image.disallowed:
            self.disallowed_requests[self.plan.authority(host)] += 1
        fault = image.fault if self.faults else None
        if hops is not None:
            fault = "redirect" if hops > 0 else None
        if is_standin(fault):
            return await self._standin(host, method, fault, writer)
        body = served_body(self.pool[image.pool], self.plan.body_index(image))
        ctype = self.ctypes[image.pool]
        if fault is None or (fault in ("flaky503", "429") and count > 1):
            return await self._send(writer, method, 200, body, ctype)
        if fault == "429":
            extra = {"Retry-After": "1"}
            return await self._send(writer, method, 429, b"slow down\n", "text/plain", extra)
        if fault.isdigit():
            page = f"<html><body>{fault}</body></html>".encode()
            return await self._send(writer, method, int(fault), page, "text/html")
        if fault == "flaky503":
            return await self._send(writer, method, 503, b"<html>busy</html>", "text/html")
        if fault == "html":
            page = b"<!DOCTYPE html><html><head><title>Hotlink</title></head><body>no</body></html>"
            return await self._send(writer, method, 200, page * 20, "image/jpeg")
        if fault == "text":
            return await self._send(writer, method, 200, b"not an image\n" * 50, "text/plain")
        if fault == "corrupt":
            return await self._send(writer, method, 200, corrupt_jpeg(image.index % 50), ctype)
        if fault == "bomb":
            return await self._send(writer, method, 200, bomb_png(), "image/png")
        if fault == "noai":
            extra = {"X-Robots-Tag": "noai"}
            return await self._send(writer, method, 200, body, ctype, extra)
        if fault == "redirect":
            left = 1 if hops is None else hops - 1
            target = f"{host.scheme}://{self.plan.authority(host)}:{self.port}/r/{left}{path}"
            return await self._send(writer, method, 302, b"", "text/html", {"Location": target})
        if fault == "truncated":
            writer.write(_head(200, ctype, len(body)) + body[: len(body) // 2])
            return False
        if fault == "midclose":
            writer.write(_head(200, ctype, None, {"Transfer-Encoding": "chunked"}))
            part = body[: len(body) // 3]
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            return False
        if fault == "stall":
            writer.write(_head(200, ctype, len(body)))
            await writer.drain()
            # Until the client gives up (its read timeout) or the stall ends: a request the client
            # has abandoned is no longer in flight, for the per-site counts.
            await self._hold(reader)
            return False
        if fault == "oversize":
            writer.write(_head(200, ctype, OVERSIZE_BYTES))
            await self._paced(writer, bytes(OVERSIZE_BYTES // 1024), repeat=1024)
            return False
        raise AssertionError(f"unknown fault {fault}")

    async def _standin(self, host: Host, method: str, kind: str, writer) -> bool:
        """A stand-in: imgur's redirect to removed.png, else the site's one stand-in body."""
        if kind == "removed":
            target = f"https://{REMOVED_HOST}:{self.port}{REMOVED_PATH}"
            return await self._send(writer, method, 302, b"", "text/html", {"Location": target})
        body, ctype = standin_body(kind, host.site)
        return await self._send(writer, method, 200, body, ctype)

    async def _send(self, writer, method, status, body, ctype, extra=None) -> bool:
        writer.write(_head(status, ctype, len(body), extra))
        if method != "HEAD" and body:
            await self._paced(writer, body)
        else:
            self._answered(writer)
        return True

    async def _paced(self, writer, body: bytes, repeat: int = 1) -> None:
        """Write ``body`` (``repeat`` times) at bytes_per_second, or at once without latency."""
        rate = self.config.bytes_per_second
        if not self.latency or rate <= 0:
            for number in range(repeat):
                writer.write(body)
                if number == repeat - 1:
                    self._answered(writer)
                await writer.drain()
            return
        loop = asyncio.get_running_loop()
        start, sent = loop.time(), 0
        step = max(16_384, int(rate / 50))
        view = memoryview(body)
        total = len(view) * repeat
        for _ in range(repeat):
            for offset in range(0, len(view), step):
                if writer.is_closing() or self._client_left(writer):  # a cap, a timeout
                    self._answered(writer)  # no longer in flight for the client either
                    return
                chunk = view[offset : offset + step]
                writer.write(chunk)
                sent += len(chunk)
                if sent >= total:
                    self._answered(writer)
                await writer.drain()
                wait = start + sent / rate - loop.time()
                if wait > 0 and sent < total:  # the last byte is out: the response is done
                    await asyncio.sleep(wait)


def _head(status: int, ctype: str, length: int | None, extra: dict | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}", f"Content-Type: {ctype}", "Server: RealWeb"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"
