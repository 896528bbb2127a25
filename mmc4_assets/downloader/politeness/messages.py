"""What a fetch loop's gate and the run's broker tell each other, one type per message.

They cross threads and, for fetch worker processes, a pipe (pickled): plain NamedTuples keep
them cheap and picklable, and a field is read by name, not by position.
"""

from __future__ import annotations

from typing import NamedTuple

from .capacity import Observation

# -- gate -> broker ----------------------------------------------------------------------------


class Want(NamedTuple):
    """Hold ``total`` connections of ``site`` (0: give them all back); ``sequence`` numbers
    the site's wants, so the gate can tell which want an answer is for."""

    site: str
    total: int
    budget: int  # the site's ceiling (adaptive) or fixed budget
    sequence: int
    start: int | None = None  # where the site's learned limit starts (None: not adaptive)


class Throttled(NamedTuple):
    """``site`` answered 429/503 to a request sent ``started_ago`` seconds ago."""

    site: str
    retry_after: float | None
    started_ago: float
    budget: int
    start: int | None = None


class Successes(NamedTuple):
    """Bodies received from a site whose budget was lowered: they earn it back."""

    site: str
    count: int
    budget: int


class Observed(NamedTuple):
    """What the loop saw of an adaptive site over about a second."""

    site: str
    seen: Observation
    budget: int  # the site's ceiling
    start: int


ToBroker = Want | Throttled | Successes | Observed

# -- broker -> gate ----------------------------------------------------------------------------


class Held(NamedTuple):
    """The ledger's answer to a want: connections held now."""

    site: str
    count: int
    short: bool  # fewer than wanted: other runs hold the rest
    sequence: int  # the want this answers
    share: int | None  # other runs wait for the site: come down to this as requests end


class SiteStatus(NamedTuple):
    """What every run must respect about a site now: a pause, a lowered budget."""

    site: str
    pause_left: float
    cap: int | None  # the lowered budget, None when the site has its configured one


ToGate = Held | SiteStatus
