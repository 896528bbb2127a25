"""Per-host circuit breaker: stop spending time on hosts that are not there.

A host that refuses, resets or never answers our connections costs every one of its images a
timeout or a round of retries. Once a host has failed ``threshold`` times without answering once
in this run, the breaker opens: its remaining images end at once with the same retryable
outcome (the stale-image sensor tries them again after its cool-down) and an error that says
why. A name that does not exist, or a TLS handshake that fails, opens it at the first failure:
they hold for every image of the host. A name lookup that fails for now (SERVFAIL, no answer)
counts like a refused connection. A host that has answered even once is never cut off.
"""

from __future__ import annotations

from dataclasses import dataclass

# Failures that say something about the host as a whole, not about one image.
HOST_FAILURES = ("refused", "timeout", "dns", "dns_failure", "tls")
_AT_ONCE = ("dns", "tls")


@dataclass
class _Host:
    answered: bool = False
    failures: int = 0
    outcome: str = "connection_error"
    reason: str | None = None  # set when the breaker is open


class HostBreaker:
    """Counts host-level failures per host and says when to stop trying it."""

    def __init__(self, threshold: int) -> None:
        self.threshold = max(1, threshold)
        self._hosts: dict[str, _Host] = {}

    def _host(self, host: str) -> _Host:
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts[host] = _Host()
        return state

    def answered(self, host: str) -> bool:
        state = self._hosts.get(host)
        return state is not None and state.answered

    def record_answer(self, host: str) -> None:
        """The host sent an HTTP response (any status): it is there."""
        state = self._host(host)
        state.answered = True
        state.reason = None

    def record_failure(self, host: str, kind: str, outcome: str, error: str | None) -> None:
        """One host-level failure (``kind`` in HOST_FAILURES) ending as ``outcome``."""
        state = self._host(host)
        if state.answered or state.reason is not None:
            return
        state.failures += 1
        state.outcome = outcome
        if kind in _AT_ONCE or state.failures >= self.threshold:
            what = {"dns": "name does not resolve", "tls": "TLS handshake failed"}.get(kind)
            if what is None:
                tries = "name lookups" if kind == "dns_failure" else f"connections ({kind})"
                what = f"{state.failures} failed {tries}, no answer this run"
            state.reason = f"host skipped: {what}; last error: {error}"

    def open_reason(self, host: str) -> tuple[str, str] | None:
        """(outcome, error) for images of a host whose breaker is open, else None."""
        state = self._hosts.get(host)
        if state is None or state.reason is None:
            return None
        return state.outcome, state.reason
