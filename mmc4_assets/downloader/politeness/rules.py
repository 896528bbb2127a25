"""The site ledger's rules as pure functions: how many connections a holder gets, how a
throttle pauses a site and lowers its budget, how successes earn it back.

The ledger (``ledger.py``) reads rows, applies these, writes the result; here nothing touches a
database, so each rule is tested on its own. Times are the database's clock.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# A throttle counts as a repeat (and halves the budget) when it follows the site's previous one
# within this many seconds.
REPEAT_WINDOW_S = 60.0


@dataclass(frozen=True)
class SiteState:
    """What every run must respect about one site, as seen at ``now`` (database clock)."""

    site: str
    paused_until: float = 0.0
    throttled_at: float | None = None  # when the current throttling episode began
    strikes: int = 0  # episodes in a row, each within REPEAT_WINDOW_S of the last
    cap: int | None = None  # the lowered budget, None when the site has its configured one
    credit: int = 0  # successes at the lowered budget toward its next step up
    now: float = 0.0

    @property
    def pause_left(self) -> float:
        return max(0.0, self.paused_until - self.now)

    def budget(self, configured: int) -> int:
        """Connections the site may have now: the configured budget, or the lowered cap."""
        if self.cap is not None:
            return max(1, min(configured, self.cap))
        return configured


@dataclass(frozen=True)
class Others:
    """The other holders' unexpired leases of one site."""

    held: int = 0  # connections they hold
    contenders: int = 0  # holders that want the site
    waiting: int = 0  # holders that want more than they hold


@dataclass(frozen=True)
class Grant:
    connections: int
    share: int | None  # set while another holder waits: come down to it as requests end


def grant(state: SiteState, budget: int, wanted: int, mine: int, others: Others) -> Grant:
    """Connections a holder that holds ``mine`` and wants ``wanted`` gets now.

    Never more than the other holders leave of the site's budget (so the leases never add up to
    more than it, whatever the interleaving), and no more than it holds while the site is
    paused. While another holder waits, no holder grows past a fair share (the budget over the
    holders that want the site); each is told that share, to come down to as its requests end
    (the ledger never takes back connections in use).
    """
    limit = state.budget(budget)
    target = min(wanted, max(0, limit - others.held))
    share = None
    if others.waiting:
        share = max(1, limit // (others.contenders + 1))
        target = min(target, max(share, mine))
    if state.pause_left > 0:
        target = min(target, mine)
    return Grant(target, share)


def after_throttle(
    state: SiteState,
    *,
    budget: int,
    retry_after: float | None,
    started_ago: float,
    backoff_base: float,
    pause_cap: float,
    learned: bool = False,
    answered: bool = False,
) -> SiteState:
    """The site's state after a 429 or 503 answering a request sent ``started_ago`` seconds ago.

    A throttle answering a request sent before the site's previous throttle was recorded belongs
    to that episode: it may lengthen the pause to its own Retry-After but is not a new strike. A
    new episode pauses the site for Retry-After (capped) or, without one, ``backoff_base *
    2**(strikes - 1)``; one that follows the previous episode within REPEAT_WINDOW_S also halves
    the site's budget.

    With ``learned`` (adaptive limits) the learned limit takes the lowered budget's place
    (``capacity.after_throttle`` halves it): the state keeps no ``cap``. ``answered``: the site
    answered since its last throttle, so the pauses escalate anew, which fixed budgets learn from
    their credits (``after_successes``).
    """
    if learned:
        strikes = 0 if answered else state.strikes
        state = dataclasses.replace(state, strikes=strikes, cap=None, credit=0)
    now = state.now
    sent_at = now - max(0.0, started_ago)
    if state.throttled_at is not None and sent_at <= state.throttled_at:
        if retry_after is None:
            return state
        until = max(state.paused_until, now + min(retry_after, pause_cap))
        return dataclasses.replace(state, paused_until=until)
    repeated = state.throttled_at is not None and now - state.throttled_at < REPEAT_WINDOW_S
    strikes = state.strikes + 1 if repeated else 1
    cap, credit = state.cap, state.credit
    if repeated and not learned:
        cap, credit = max(1, state.budget(budget) // 2), 0
    if retry_after is not None:
        pause = min(retry_after, pause_cap)
    else:
        pause = min(pause_cap, backoff_base * 2 ** (strikes - 1))
    return dataclasses.replace(
        state,
        paused_until=max(state.paused_until, now + pause),
        throttled_at=now,
        strikes=strikes,
        cap=cap,
        credit=credit,
    )


def after_successes(state: SiteState, successes: int, budget: int) -> SiteState:
    """The site's state after ``successes`` bodies at a lowered budget: it grows by one for
    every ``cap`` of them, back to the configured budget (where the cap ends).

    Successes after the pause also end the escalation of pauses: the site answers again, so its
    next throttle (a one-off 503 among many images) pauses it for the base time, not twice the
    last; coming within REPEAT_WINDOW_S, it still halves the budget.
    """
    if state.cap is None:
        return state
    cap, credit = state.cap, state.credit + successes
    while cap < budget and credit >= cap:
        credit -= cap
        cap += 1
    new_cap = None if cap >= budget else cap
    strikes = 0 if successes > 0 and state.pause_left <= 0 else state.strikes
    return dataclasses.replace(
        state, cap=new_cap, credit=0 if new_cap is None else credit, strikes=strikes
    )
