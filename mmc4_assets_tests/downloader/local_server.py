"""A tiny programmable HTTP server on 127.0.0.1 for the downloader's tests."""

from __future__ import annotations

import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


class LocalServer:
    """A ThreadingHTTPServer whose paths map to small handler functions; records requests."""

    def __init__(self, routes: dict, host: str = "127.0.0.1", latency: float = 0.0) -> None:
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
                    with server._lock:
                        server.active -= 1

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.port = self.httpd.server_address[1]
        self.host = host
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def count(self, path: str | None = None) -> int:
        return sum(1 for p, _, _ in self.requests if path is None or p == path)

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


def hang_up(h) -> None:
    """Close the connection abruptly (RST) without finishing the response."""
    h.wfile.flush()
    h.connection.setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
    )
    h.close_connection = True
    h.connection.shutdown(socket.SHUT_RDWR)
