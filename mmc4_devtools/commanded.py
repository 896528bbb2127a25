"""A server child process driven by one-line commands on its stdin, answering JSON lines.

Why: the benchmark web's HTTP servers and its DNS server run in processes of their own (so they
never share a client's GIL, and can be started inside a network namespace), and the parent must
switch their modes, reset and read their counters between contenders. Both sides are here:
``serve_commands`` in the child, ``CommandedProcess`` in the parent. The child stops itself when
its stdin closes (the parent went away) or when told ``stop``.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

Handler = Callable[[dict[str, str]], Awaitable[dict | None]]


def reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve_commands(
    loop: asyncio.AbstractEventLoop, handlers: dict[str, Handler], stop: Callable[[], Awaitable]
) -> None:
    """Read ``name key=value ...`` lines in a thread and answer each with the handler's dict.

    ``stop`` runs on ``stop`` and on stdin's end; a handler returning None sends no reply.
    """

    async def command(line: str) -> None:
        words = line.split()
        if not words:
            return
        if words[0] == "stop":
            await stop()
            return
        handler = handlers.get(words[0])
        if handler is None:
            reply({"ok": False, "error": f"unknown command {words[0]!r}"})
            return
        options = dict(word.split("=", 1) for word in words[1:] if "=" in word)
        answer = await handler(options)
        if answer is not None:
            reply({"ok": True, **answer})

    def read() -> None:
        for line in sys.stdin:
            asyncio.run_coroutine_threadsafe(command(line), loop).result()
        asyncio.run_coroutine_threadsafe(stop(), loop)

    threading.Thread(target=read, daemon=True).start()


class CommandedProcess:
    """The parent's handle on one such child: start it, wait for its ready line, command it."""

    def __init__(self, cmd: list[str], ready_timeout: float = 120.0):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            self.ready = self.read(ready_timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"server {self.proc.pid} did not answer (exit {self.proc.poll()})")
        message = json.loads(line)
        if not message.get("ok", True):
            raise RuntimeError(f"server {self.proc.pid}: {message.get('error')}")
        return message

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def command(self, line: str, timeout: float = 30.0) -> dict:
        self.send(line)
        return self.read(timeout)

    def cpu_seconds(self) -> float:
        """User + system CPU of the child and of the children it reaped (``ip netns exec``)."""
        total = 0.0
        for pid in [self.proc.pid, *_children(self.proc.pid)]:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += sum(int(x) for x in stat[11:15]) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self, timeout: float = 10.0) -> int:
        try:
            self.proc.stdin.close()  # EOF: the child stops itself
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    found = [int(x) for x in text.split()]
    return found + [grand for child in found for grand in _children(child)]
