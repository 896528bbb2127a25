"""Names to addresses, as asynchronously as the rest of the engine, under the address policy.

Why not getaddrinfo: it blocks a thread per lookup, and asyncio's default pool has a handful of
them per process, so a few names whose servers answer slowly or never (glibc waits 5 s a try,
two tries, for A and AAAA) hold every other lookup of the run. c-ares (through ``aiodns``) runs
any number of lookups at once on the event loop, reading the system's resolv.conf and hosts file.

- One lookup in flight per name, shared by every request that needs it; its answer is kept for
  the run (a thousand images on one host are one lookup).
- A name that does not exist (NXDOMAIN, or no address) is kept for the run too, and says so
  (``NameNotFound``: the host's breaker opens at once). A lookup that fails otherwise (SERVFAIL,
  refused, no answer within ``timeout``) is not kept: it is ``LookupFailed``, the next request
  asks again, and the host's breaker counts it like a refused connection.
- The address policy applies to every answer: the connector only ever sees allowed addresses, so
  an answer that changes between a check and the connect cannot slip through.
- ``prefetch`` starts lookups for hosts whose turn is coming, so their first request does not
  wait for its name.
"""

from __future__ import annotations

import asyncio
import socket

import aiodns
from aiohttp.abc import AbstractResolver, ResolveResult

from .netguard import AddressPolicy, BlockedAddress

# c-ares' own codes for "this name has no address": kept for the run, the breaker opens at once.
_NOT_FOUND = frozenset(
    {aiodns.error.ARES_ENOTFOUND, aiodns.error.ARES_ENONAME, aiodns.error.ARES_ENODATA}
)
_NUMERIC = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV


class NameNotFound(socket.gaierror):
    """The name does not exist, or has no address (an OSError: aiohttp reports it as DNS).
    Made as ``NameNotFound(socket.EAI_NONAME, message)``."""


class LookupFailed(socket.gaierror):
    """The lookup failed for now (SERVFAIL, refused, no answer in time): ask again later.
    Made as ``LookupFailed(socket.EAI_AGAIN, message)``."""


class GuardedResolver(AbstractResolver):
    """c-ares lookups shared per name, kept for the run, filtered by the address policy.

    Create it inside the event loop that will use it.
    """

    def __init__(self, policy: AddressPolicy, timeout: float) -> None:
        self._policy = policy
        self._timeout = timeout
        # c-ares' own retries fit inside our deadline: two tries of half of it each.
        self._cares = aiodns.DNSResolver(timeout=max(0.1, timeout / 2), tries=2)
        self._answers: dict[tuple[str, int, int], list[ResolveResult] | BaseException] = {}
        self._pending: dict[tuple[str, int, int], asyncio.Future] = {}
        self.lookups = 0  # lookups sent (for tests and stats)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        key = (host, port, int(family))
        answer = self._answers.get(key)
        if answer is None:
            answer = await asyncio.shield(self._lookup(key))
        if isinstance(answer, BaseException):
            raise type(answer)(*answer.args)  # a fresh one: re-raising grows its traceback
        return answer

    def prefetch(self, host: str, port: int, family: int = 0) -> None:
        """Start looking ``host`` up now, if nobody has (its answer waits for its requests)."""
        key = (host, port, int(family))
        if key not in self._answers:
            self._lookup(key)

    def _lookup(self, key: tuple[str, int, int]) -> asyncio.Future:
        future = self._pending.get(key)
        if future is None:
            future = asyncio.ensure_future(self._ask(*key))
            self._pending[key] = future
            future.add_done_callback(lambda _: self._pending.pop(key, None))
        return future

    async def _ask(self, host: str, port: int, family: int) -> list[ResolveResult] | BaseException:
        self.lookups += 1
        key = (host, port, family)
        try:
            async with asyncio.timeout(self._timeout):
                found = await self._cares.getaddrinfo(
                    host, family=family, port=port, type=socket.SOCK_STREAM
                )
            answer: list[ResolveResult] | BaseException = self._filter(host, port, found.nodes)
        except aiodns.error.DNSError as error:
            code = error.args[0] if error.args else None
            text = error.args[1] if len(error.args) > 1 else "lookup failed"
            if code in _NOT_FOUND:
                answer = NameNotFound(socket.EAI_NONAME, f"{host}: name does not resolve ({text})")
            else:
                text = f"{host}: name lookup failed ({text})"
                return LookupFailed(socket.EAI_AGAIN, text)  # not kept
        except TimeoutError:
            text = f"{host}: no answer to the name lookup in {self._timeout:g}s"
            return LookupFailed(socket.EAI_AGAIN, text)
        except BlockedAddress as error:
            answer = error
        self._answers[key] = answer
        return answer

    def _filter(self, host: str, port: int, nodes) -> list[ResolveResult]:
        found = []
        for node in nodes:
            address = node.addr[0]
            address = address.decode() if isinstance(address, bytes) else address
            found.append(
                ResolveResult(
                    hostname=host,
                    host=address,
                    port=port,
                    family=node.family,
                    proto=0,
                    flags=_NUMERIC,
                )
            )
        kept = [entry for entry in found if self._policy.permits(entry["host"])]
        if not kept:
            if not found:
                raise aiodns.error.DNSError(aiodns.error.ARES_ENODATA, "no address")
            shown = ", ".join(sorted({entry["host"] for entry in found}))
            raise BlockedAddress(f"{host} resolves to non-public address {shown}")
        return kept

    async def close(self) -> None:
        for future in list(self._pending.values()):
            future.cancel()
        self._cares.cancel()
