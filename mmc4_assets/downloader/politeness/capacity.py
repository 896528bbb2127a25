"""Each site's concurrency limit, found from its own answers: pure functions, no database.

A site's limit is the deployment's (the ledger keeps it next to the leases and pauses); every run
reports what it saw there about once a second (``Observation``), and ``next_limit`` turns the
site's limit and the report into the next limit. The idea is Vegas's, in ratios: a site that
answers as fast as when it was unloaded has room; one whose answers take longer because we send
more is queueing our requests (its visitors' too), and the number it can serve at full speed is
about what we have in flight times unloaded / loaded latency.

- **Latency** is the time to the response head of bodies received (not the body's transfer,
  which depends on its size; not DNS or connection set-up). A report gives its median (robust to
  a few slow answers) and its quartiles.
- **Noise**: every comparison allows for chance. A report of few answers from a site whose
  answers are spread (the web's are, log-normally) has a median far from the site's own, so
  each test widens by twice the median's standard error, read from the report's own spread
  (``noise_margin``); answers that queue are slow alike and leave the tests as sharp as without.
- **Unloaded latency** starts at the first report's lower quartile (a server that queues still
  answers the first requests of a burst at once), or its fastest answer where the report's
  spread cannot explain it. Three runs split that burst, so while the site is young (its first
  ``YOUNG_ANSWERS`` answers, across runs) any run's report may lower it the same way
  (``idle_answer``, ``burst_answers``). Then it follows the lowest median seen, as low as the
  report proves (its median times its margin). When a cut in load did not bring the latency
  down, the latency is not ours to fix (a slower server, or noise): the estimate moves up to it
  instead of cutting again, so noise cannot collapse a limit.
- **Grow** while the median is within ``HEADROOM`` of unloaded and the site is the bottleneck
  (every connection of its limit leased, some run wanting more): doubling per report at first
  (slow start), then by a tenth; not while the site is young and more than one run holds it
  (its first answers, or since its last throttle: the other runs may still be reporting its
  first burst, which may lower the estimate; one run's first report holds all of it). A site
  with a handful of images never wants more than it has and is never probed.
- **Shrink** when the median passes ``TOLERANCE`` times unloaded: to the estimated capacity plus
  the headroom, never below half at once (at one request at a time, its latency is the
  unloaded one whatever the estimate said); when a quarter of the answers (three at least) are
  errors (5xx, resets, timeouts): by 30%; on a throttle (429/503) that follows another soon: by
  half. Fast errors are no reason to grow: only bodies count as samples. Only a request's first
  attempt counts as an error: one broken URL tried three times within two seconds is one
  error, not the three that cut wp.com's limit from 9 to 6 in a report of four bodies.
- **Throttles** always pause the site as told (``rules.after_throttle``). A new episode halves
  its limit unless the site answered 1 / ``THROTTLE_SHARE`` requests or more since its last one
  (or since it was first seen): a site that throttles often means it. A big site whose odd URL
  answers 429 or 503 once (on the realistic web about one in two hundred of wp.com's answers,
  every 5-10 s) is not asking for less concurrency: halving it for each took wp.com from 34
  connections to 4 within 20 s, and made it the run's last site. TCP's successors draw the same
  line (BBR does not back off for a loss rate under 2%).
- **Bounds**: never below 1 nor above the ceiling. A site left alone for a minute decays toward
  the start value (a run killed mid-probe leaves no inflated limit), and after ten minutes it is
  forgotten.

Why not the others: AIMD on errors alone learns only by hurting the site (it grows until 503s);
Gradient2's long/short average absorbs a sustained queue into its baseline; Scrapy's
AutoThrottle sets a delay per request, not a shared concurrency; Heritrix's 5x-the-last-fetch is
a single-connection politeness rule.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass

TOLERANCE = 1.25  # median over unloaded past which the site is queueing: shrink
HEADROOM = 1.1  # median over unloaded under which the site has room: grow
MIN_SAMPLES = 5  # bodies a report needs for its latency to count (the gate waits for them)
RELIABLE_SAMPLES = 10  # bodies a report needs to lower the unloaded estimate
# Errors among the answers past which the site is shrunk: a few broken URLs in a second are
# theirs, not the site's load (on the realistic web about one image in ten is broken).
ERROR_SHARE = 0.25
MIN_ERRORS = 3
# Throttles among a site's answers past which a throttle halves its limit.
THROTTLE_SHARE = 0.02
IDLE_GRACE_S = 60.0  # a site unobserved this long decays toward the start value
IDLE_HALF_LIFE_S = 60.0
FORGET_S = 600.0  # a site unobserved this long starts over
# After a change of the limit, reports hold answers sent under the old one for about a report's
# window (1 s, or the span of its answers when longer) and an answer's time: until then they
# only update the estimates, whichever run sends them (three runs report three times a second,
# and must not change it three times).
SETTLE_S = 1.5
# A site's first answers (across runs): each report may lower the unloaded estimate to the
# idle answers it holds (``idle_answer``, ``burst_answers``), and none grows a shared site.
YOUNG_ANSWERS = 4 * MIN_SAMPLES
TIGHT_SIGMA = 0.1  # a report's spread under which its answers are slow alike (queueing)


@dataclass(frozen=True)
class Observation:
    """What one run saw of one site over about a second."""

    bodies: int  # answers with a body: the latency samples
    fast: float  # their lower quartile time to the response head (s)
    median: float  # their median time to the response head (s)
    errors: int = 0  # 5xx answers other than throttles, resets, timeouts
    slow: float = 0.0  # their upper quartile (0: not known)
    least: float = 0.0  # the fastest of them (0: not known)
    span: float = 0.0  # seconds from the report's first answer to the report


@dataclass(frozen=True)
class SiteLimit:
    """A site's concurrency limit and what it was learned from (database clock)."""

    site: str
    limit: float
    unloaded: float | None = None  # seconds to the response head with room to spare
    loaded: float | None = None  # the latest median
    slow_start: bool = True
    in_use: int = 0  # connections leased when the latest report came
    observed_at: float = 0.0
    peak: float = 0.0  # the highest limit it reached
    # The limit changed since the last report: the next one mixes the old load and the new
    # (its answers were sent under both), so it only updates the estimates.
    settling: bool = False
    answers: int = 0  # answers reported since the site's last throttling episode

    def allowed(self, ceiling: int) -> int:
        """Connections the site may have now."""
        return max(1, min(ceiling, int(self.limit)))


def fresh(site: str, start: int, now: float) -> SiteLimit:
    return SiteLimit(site, float(start), observed_at=now, peak=float(start))


def current(limit: SiteLimit | None, site: str, start: int, now: float) -> SiteLimit:
    """The site's limit as of ``now``: idle decay applied (toward ``start``), or a fresh one."""
    if limit is None or now - limit.observed_at >= FORGET_S:
        return fresh(site, start, now)
    idle = now - limit.observed_at
    if idle <= IDLE_GRACE_S or limit.limit <= start:
        return limit
    kept = 0.5 ** ((idle - IDLE_GRACE_S) / IDLE_HALF_LIFE_S)
    return dataclasses.replace(limit, limit=start + (limit.limit - start) * kept)


def next_limit(
    limit: SiteLimit,
    seen: Observation,
    *,
    ceiling: int,
    in_use: int,
    bottleneck: bool,
    shared: bool = False,
    now: float,
) -> SiteLimit:
    """The site's limit after one run's report ``seen``; ``in_use`` connections of it are
    leased now, and ``bottleneck`` says whether all of its limit is leased with runs wanting
    more; ``shared``, whether more than one run holds or wants it. ``limit`` is the site's
    current limit (``current``)."""
    answers = seen.bodies + seen.errors
    limit = dataclasses.replace(limit, answers=limit.answers + answers)
    new = dataclasses.replace(limit, observed_at=now, in_use=in_use, settling=False)
    noise = noise_margin(seen)
    # observed_at is the change's time; the report's first answer was sent about its median
    # before it came, and a small site's report gathers its answers over seconds.
    mixed = max(SETTLE_S, seen.span + seen.median)
    settling = limit.settling and now - limit.observed_at < mixed
    if not settling and seen.errors >= max(MIN_ERRORS, ERROR_SHARE * answers):
        return _set(new, new.limit * 0.7, ceiling, slow_start=False)
    if settling:  # the load and latency before the change stay the reference
        unloaded = limit.unloaded
        if unloaded is None and seen.bodies >= MIN_SAMPLES:
            unloaded = first_unloaded(seen, noise)
        return dataclasses.replace(limit, unloaded=unloaded)
    if seen.bodies < MIN_SAMPLES:
        return new
    unloaded, slow_start = limit.unloaded, new.slow_start
    young = limit.answers - answers < YOUNG_ANSWERS  # runs are still reporting the first burst
    if unloaded is None:
        unloaded = first_unloaded(seen, noise)
    elif young:  # another run's share of the first burst
        unloaded = min(unloaded, burst_answers(seen, noise), idle_answer(seen))
    if seen.median * noise < unloaded and seen.bodies >= RELIABLE_SAMPLES:
        unloaded = seen.median * noise  # only as low as the report proves
    ratio = seen.median / unloaded if unloaded > 0 else 1.0
    load_fell = limit.in_use and in_use * 1.2 <= limit.in_use
    fell_with_load = limit.loaded and seen.median * noise < 0.9 * limit.loaded
    if ratio > TOLERANCE and (in_use <= 1 or load_fell and not fell_with_load):
        # Less load did not bring the latency down, or one request at a time is still slow:
        # it is not queueing for us (noise, a slower site, or an estimate that came out too
        # low). Take it as the site's unloaded latency and grow back quickly.
        unloaded, ratio, slow_start = seen.median, 1.0, True
    new = dataclasses.replace(new, unloaded=unloaded, loaded=seen.median, slow_start=slow_start)
    if ratio > TOLERANCE * noise and in_use > 1:
        capacity = max(1, min(in_use, new.limit)) / ratio
        target = max(new.limit * 0.5, min(new.limit, capacity * HEADROOM))
        return _set(new, target, ceiling, slow_start=False)
    if ratio < HEADROOM * math.sqrt(noise) and bottleneck and not (young and shared):
        grown = new.limit * 2 if new.slow_start else new.limit + max(1.0, new.limit * 0.1)
        return _set(new, grown, ceiling, slow_start=new.slow_start)
    return new


def noise_margin(seen: Observation) -> float:
    """How far a report's median may stray by chance: twice its standard error, as a factor.

    Answer times of a site that does not queue are spread (log-normally, roughly) by the network
    and the server, and the median of a few of them is far from the site's own: with the spread
    of the realistic web (sigma 0.9), the median of 10 answers is off by more than 1.25x one
    report in four. The spread is read from the report itself, from its upper half (upper
    quartile over median): its lower half mixes in the first answers of a burst, which found an
    idle server. A queueing site's answers are slow alike, so its margin stays near 1 and it is
    still cut at once.
    """
    if seen.bodies < 1:
        return 1.0
    return math.exp(2 * 1.2533 * upper_spread(seen) / math.sqrt(seen.bodies))  # median's s.e.


def upper_spread(seen: Observation) -> float:
    """The log-normal sigma a report's upper half gives (upper quartile over median); 0 when
    it is not known."""
    if seen.median <= 0 or seen.slow <= seen.median:
        return 0.0
    return math.log(seen.slow / seen.median) / 0.674  # a log-normal's quartile over median


def first_unloaded(seen: Observation, noise: float) -> float:
    """A site's first report: its first answers found the site idle, but by chance some of a
    spread site's are fast too."""
    return min(seen.median, seen.fast * noise, idle_answer(seen))


def burst_answers(seen: Observation, noise: float) -> float:
    """The unloaded latency a report's lower quartile proves when its upper half is slow alike.

    Three runs that start together at a server of 2 split its first burst: the first report to
    reach the ledger may hold only answers that waited, another run's the two immediate ones
    and three that waited ([0.3, 0.3, 0.6, 0.6, 0.6] s). That report's lower quartile is the
    idle latency, and its upper half, tight, says the rest queued. A site that does not queue
    spreads above its median as below, so a spread upper half proves nothing here. Simulated,
    four young reports of 5 log-normal answers (sigma 0.9) leave the estimate under half the
    site's median 22% of the time (16% before this rule, 32% trusting every lower quartile);
    too low is the polite side, and ``next_limit`` climbs out of it.
    """
    if seen.bodies < MIN_SAMPLES or seen.fast <= 0 or upper_spread(seen) > TIGHT_SIGMA:
        return math.inf
    return seen.fast * noise


def idle_answer(seen: Observation) -> float:
    """The unloaded latency a report's fastest answer proves, when its spread cannot explain it.

    A queueing server answers the first requests of a burst at once and every later one after
    a wait: on a server that serves 2 at a time, with 4 in flight, two answers of 0.3 s, then
    0.6 s each. Three runs sharing it split those first answers, so one run's report may hold
    one fast answer among slow ones, below its lower quartile. A log-normal site's fastest of n
    answers is also far below its median (about exp(-1.2 sigma) for 5): the answer counts only
    down to where the report's spread (its upper half, as in ``noise_margin``) puts the fastest
    of n by chance, and a queueing report's upper half is tight (its answers are slow alike).
    The spread of a few answers is itself a guess, often too small (of 5 log-normal answers,
    one report in three would put the unloaded latency below 80% of the site's median): so the
    fastest answer counts only in a report whose quartiles are within ``TIGHT_SIGMA`` of each
    other (by chance, for sigma 0.9: one report of 5 in forty, of 8 one in two thousand). Should
    one still come out too low, a site cut to one request at a time that is still slow takes its
    latency as unloaded (``next_limit``): a request alone queues behind none of ours.
    """
    n = seen.bodies
    if seen.least <= 0 or n < MIN_SAMPLES or seen.fast <= 0:
        return math.inf
    if math.log(seen.slow / seen.fast) / 1.349 > TIGHT_SIGMA:  # the quartiles' spread
        return math.inf
    by_chance = -statistics.NormalDist().inv_cdf(0.625 / (n + 0.25))  # Blom: E[min of n]
    return seen.least * math.exp(upper_spread(seen) * by_chance) * noise_margin(seen)


def after_throttle(limit: SiteLimit, ceiling: int, now: float) -> SiteLimit:
    """The site's limit after a new throttling episode (429/503): halved when fewer than 1 /
    ``THROTTLE_SHARE`` answers came since the last (or since the site was first seen); the count
    of answers starts again either way."""
    counted = dataclasses.replace(limit, answers=0)
    if limit.answers * THROTTLE_SHARE >= 1:
        return counted
    return _set(dataclasses.replace(counted, observed_at=now), limit.limit * 0.5, ceiling, False)


def _set(limit: SiteLimit, value: float, ceiling: int, slow_start: bool) -> SiteLimit:
    value = max(1.0, min(float(ceiling), value))
    changed = int(value) != int(limit.limit)
    return dataclasses.replace(
        limit,
        limit=value,
        slow_start=slow_start,
        peak=max(limit.peak, value),
        settling=limit.settling or changed,
    )
