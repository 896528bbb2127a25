"""A loopback image server with a capacity: what a real server with C workers does.

Up to ``capacity`` requests are served at once, each in ``base`` seconds; more wait in line for a
worker (first come, first served), so their answers take longer the more are in flight; past
twice the capacity a request is refused at once with a bare 503. ``capacity`` may change while
it runs (a site that slows down). It records every answer and, ten times a second, how many
requests were in flight.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _jpeg(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(buffer, format="JPEG")
    return buffer.getvalue()


class CapacityServer:
    def __init__(self, capacity: int, base: float, *, status: int = 200) -> None:
        self.capacity = capacity
        self.base = base
        self.status = status  # what a served request answers (500: a site of fast errors)
        self.body = _jpeg(64, 48)
        self.in_flight = 0
        self.max_in_flight = 0
        self.busy = 0  # requests being served by a worker
        self.answers: list[tuple[float, int, float]] = []  # (arrival, status, seconds)
        self.samples: list[tuple[float, int]] = []  # (time, in flight)
        self._lock = threading.Condition()
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server._serve(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.request_queue_size = 1024
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        threading.Thread(target=self._sample, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        if handler.path == "/robots.txt":
            self._send(handler, 404, b"")
            return
        arrived = time.monotonic()
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            shed = self.in_flight > 2 * self.capacity
            if not shed:
                while self.busy >= self.capacity:
                    self._lock.wait()
                self.busy += 1
        try:
            if shed:
                status = 503
            else:
                time.sleep(self.base)
                status = self.status
                with self._lock:
                    self.busy -= 1
                    self._lock.notify()
            # Each path its own body (the picture, then its path after the JPEG's end): one body
            # under many URLs is a stand-in (storing/standins.py).
            body = self.body + handler.path.encode()[:200] if status == 200 else b"busy"
            self._send(handler, status, body)
        finally:
            with self._lock:
                self.in_flight -= 1
                self.answers.append((arrived, status, time.monotonic() - arrived))

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "image/jpeg" if status == 200 else "text/plain")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:  # the client went away (its run ended, or it gave up waiting)
            handler.close_connection = True

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            with self._lock:
                self.samples.append((time.monotonic(), self.in_flight))

    def set_capacity(self, capacity: int) -> None:
        with self._lock:
            self.capacity = capacity
            self._lock.notify_all()

    # -- what happened ------------------------------------------------------------------------

    def shed(self) -> int:
        return sum(1 for _, status, _ in self.answers if status == 503)

    def served_seconds(self) -> list[float]:
        return [seconds for _, status, seconds in self.answers if status != 503]

    def mean_in_flight(self, since: float = 0.0, until: float = float("inf")) -> float:
        """Requests in flight on average while it had any, between two times."""
        busy = [n for t, n in self.samples if since <= t <= until and n > 0]
        return sum(busy) / len(busy) if busy else 0.0

    def close(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
