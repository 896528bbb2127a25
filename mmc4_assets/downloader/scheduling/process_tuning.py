"""Process-wide tuning for a fetch process: the allocator, asyncio's TLS buffers, the collector.

Each knob is here because a benchmark showed its cost (benchmarks/README.md, the image engine's
memory and CPU sections); none changes an outcome.

- glibc ``mallopt``: decoder threads allocating and freeing bodies of a few hundred KB make glibc
  grow one arena per thread and raise its mmap threshold, so freed memory is kept, not returned.
  A fixed 64 KB mmap threshold (bodies and pixels go straight back to the OS) and four arenas
  keep a fetch process's RSS flat over a shard.
- ``asyncio.sslproto.SSLProtocol.max_size``: asyncio gives every TLS connection a read buffer of
  256 KB (allocated and zeroed whether used or not; 64 connections held 16 MB); TLS records are
  16 KB at most, so 32 KB loses nothing. With asyncio's own loop instead of uvloop (whose buffer
  is a fixed 256 KB), the real web's tree peak fell from 521 MB to 478 MB at the same CPU per
  image. There is no public API for it: the attribute is asyncio's private class constant, read
  per connection, and the patch is a no-op if a future Python drops it.
- ``gc.freeze()`` for a run's duration: a Dagster process holds millions of objects before the
  run starts, and full collections over them cost about a tenth of the run's CPU.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import gc
import threading
from collections.abc import Callable

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_TLS_READ_BUFFER = 32 * 1024
_memory_tuned = False


def tune_memory() -> None:
    """Make this process hold less memory per body and per connection (Linux glibc); once.

    The same three allocator values reach the daemon, which runs none of our code, as
    environment (``MALLOC_ARENA_MAX`` etc.): the Makefile's ``MALLOC_ENV`` and the Helm values'
    ``dagsterDaemon.env``. Change them together."""
    global _memory_tuned
    if _memory_tuned:
        return
    _memory_tuned = True
    asyncio.sslproto.SSLProtocol.max_size = _TLS_READ_BUFFER
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_ARENA_MAX, 4)
        libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 1024 * 1024)
    except (OSError, AttributeError):
        pass  # not glibc: its allocator's defaults stand


def _run_on_new_loop(make: Callable) -> None:
    # The objects alive before the run are moved out of the collector's sight for its duration.
    gc.freeze()
    try:
        with asyncio.Runner() as runner:
            runner.run(make())
    finally:
        gc.unfreeze()


def run_coroutine(make: Callable) -> None:
    """Run ``make()`` on a fresh event loop: here, or in a thread if this one already has one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        _run_on_new_loop(make)
        return
    errors: list[BaseException] = []

    def target() -> None:
        try:
            _run_on_new_loop(make)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller
            errors.append(error)

    thread = threading.Thread(target=target, name="mmc4-download-loop")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
