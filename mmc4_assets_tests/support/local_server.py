"""Tiny programmable servers on 127.0.0.x for the downloader's tests: HTTP(S), and a silent one."""

from __future__ import annotations

import io
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image


class LocalServer:
    """A ThreadingHTTPServer whose paths map to small handler functions; records requests."""

    def __init__(
        self,
        routes: dict,
        host: str = "127.0.0.1",
        latency: float = 0.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.routes = routes
        self.requests: list[tuple[str, float, dict]] = []
        self.active = 0
        self.max_active = 0
        self.max_active_by_path_prefix: dict[str, int] = {}
        self.latency = latency
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                with server._lock:
                    server.requests.append((self.path, time.monotonic(), dict(self.headers)))
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                self.counted = True
                try:
                    if server.latency:
                        time.sleep(server.latency)
                    route = server.routes.get(self.path.split("?")[0])
                    if route is None:
                        send(self, 404, b"not found", "text/plain")
                    else:
                        route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    self.answered()

            def answered(self) -> None:
                """The request stops counting as in flight: ``send`` calls this just before
                the body's bytes go out, since the client may send its next request as soon as
                it has them (before this thread runs again)."""
                if self.counted:
                    self.counted = False
                    with server._lock:
                        server.active -= 1

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.port = self.httpd.server_address[1]
        self.host = host
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{path}"

    def count(self, path: str | None = None) -> int:
        return sum(1 for p, _, _ in self.requests if path is None or p == path)

    def fetches(self) -> int:
        """Requests for anything but /robots.txt (what the downloader asked of the images)."""
        return self.count() - self.count("/robots.txt")

    def times(self, path: str) -> list[float]:
        return [t for p, t, _ in self.requests if p == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def send(h, status: int, body: bytes, ctype: str = "image/jpeg", headers: dict | None = None):
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    for key, value in (headers or {}).items():
        h.send_header(key, value)
    h.end_headers()
    answered = getattr(h, "answered", None)
    if answered is not None:
        answered()
    h.wfile.write(body)


def image_bytes(width: int, height: int, fmt: str = "JPEG", color=(200, 40, 90)) -> bytes:
    buffer = io.BytesIO()
    mode = "RGBA" if fmt == "PNG" else "RGB"
    fill = (*color, 255) if mode == "RGBA" else color
    image = Image.new(mode, (width, height), fill)
    # A little structure so encoders do real work.
    for x in range(0, width, max(1, width // 10)):
        for y in range(height):
            image.putpixel((x, y), (0, 0, 0, 255) if mode == "RGBA" else (0, 0, 0))
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def variant(jpeg: bytes, n: int) -> bytes:
    """The JPEG ``jpeg`` with a comment segment naming ``n``: the same picture, other bytes (one
    server's images are not one body under many URLs, which is a stand-in's mark)."""
    tag = f"image {n}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(tag) + 2).to_bytes(2, "big") + tag + jpeg[2:]


def image_routes(count: int, jpeg: bytes) -> dict:
    """Routes ``/0.jpg`` … serving ``count`` variants of ``jpeg``, one body each."""

    def route(body: bytes):
        return lambda h: send(h, 200, body)

    return {f"/{i}.jpg": route(variant(jpeg, i)) for i in range(count)}


def hang_up(h) -> None:
    """Close the connection abruptly (RST) without finishing the response."""
    h.wfile.flush()
    h.connection.setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
    )
    h.close_connection = True
    h.connection.shutdown(socket.SHUT_RDWR)


class SilentServer:
    """Accepts connections and never answers (a host that is up but hung); counts connections."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._listener = socket.create_server((host, 0), backlog=128)
        self._listener.settimeout(0.05)
        self.host = host
        self.port = self._listener.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._held.append(connection)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()
        for connection in self._held:
            connection.close()


def refusing_url(host: str, path: str) -> str:
    """A URL on ``host`` at a port nothing listens on: connections are refused at once."""
    with socket.create_server((host, 0)) as probe:
        port = probe.getsockname()[1]
    return f"http://{host}:{port}{path}"


@dataclass
class ThrowawayCA:
    bundle: Path  # the CA certificate, PEM: what a user passes as ca_bundle
    server_context: ssl.SSLContext  # serves a certificate for 127.0.0.1 and localhost
