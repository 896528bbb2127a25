"""A server child process (started by ``RealWeb`` as ``python -m mmc4_devtools.real_web
--serve ...``): raise the file limit, bind its share of the hosts, say ready on stdout, obey
commands on stdin, stop when told or due."""

from __future__ import annotations

import asyncio
import resource
import signal
import time
from pathlib import Path

from mmc4_devtools.commanded import reply, serve_commands
from mmc4_devtools.real_web.config import RealWebConfig
from mmc4_devtools.real_web.server import Server


async def serve(config: RealWebConfig, workdir: Path, port: int, part: int, parts: int) -> None:
    """A server child: bind, say ready on stdout, obey stdin commands, stop when told or due."""
    started = time.monotonic()
    fd_limit = _raise_fd_limit()
    server = Server(config, workdir, part, parts)
    chosen = await server.listen_all(port)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_network_errors)
    loop.call_later(config.max_runtime_s, lambda: asyncio.ensure_future(server.stop()))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(server.stop()))

    async def set_mode(options: dict[str, str]) -> dict:
        latency = options.get("latency", str(int(server.latency))) == "1"
        faults = options.get("faults", str(int(server.faults))) == "1"
        await server.set_mode(latency, faults)
        return {"latency": server.latency, "faults": server.faults}

    async def reset(options: dict[str, str]) -> dict:
        server.reset()
        return {}

    async def stats(options: dict[str, str]) -> dict:
        return server.stats()

    serve_commands(loop, {"set": set_mode, "reset": reset, "stats": stats}, server.stop)
    reply(
        {
            "ready": True,
            "port": chosen,
            "hosts": len(server.hosts),
            "fd_limit": fd_limit,
            "startup_s": round(time.monotonic() - started, 2),
        }
    )
    await server.stopped.wait()


def _quiet_network_errors(loop, context: dict) -> None:
    """Clients hanging up or refusing our certificate are part of the game, not news."""
    if isinstance(context.get("exception"), (OSError, TimeoutError)):  # SSLError is an OSError
        return
    loop.default_exception_handler(context)


def run(coroutine) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


def _raise_fd_limit() -> int:
    """Thousands of listeners plus hundreds of connections need more than the usual 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
