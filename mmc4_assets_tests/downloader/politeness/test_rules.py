"""The site ledger's rules, without a database: fair shares, throttle escalation, earning back."""

from mmc4_assets.downloader.politeness.rules import (
    REPEAT_WINDOW_S,
    Others,
    SiteState,
    after_successes,
    after_throttle,
    grant,
)

NOW = 1000.0


def test_grant_never_exceeds_what_the_others_leave():
    state = SiteState("a.test", now=NOW)
    assert grant(state, 8, wanted=20, mine=0, others=Others(held=5)).connections == 3
    assert grant(state, 8, wanted=2, mine=0, others=Others(held=5)).connections == 2
    assert grant(state, 8, wanted=20, mine=0, others=Others(held=8)).connections == 0


def test_a_waiting_holder_caps_everyone_at_a_fair_share_but_takes_nothing_in_use():
    state = SiteState("a.test", now=NOW)
    # I hold 6 of 8, two others want the site and one of them waits: the share is 8 // 3.
    given = grant(state, 8, wanted=20, mine=6, others=Others(held=2, contenders=2, waiting=1))
    assert given.share == 2
    assert given.connections == 6  # keeps what it holds; comes down as its requests end
    newcomer = grant(state, 8, wanted=20, mine=0, others=Others(held=6, contenders=1, waiting=1))
    assert newcomer.connections == 2 and newcomer.share == 4


def test_a_paused_site_grants_nothing_new():
    state = SiteState("a.test", paused_until=NOW + 5, now=NOW)
    assert grant(state, 8, wanted=8, mine=3, others=Others()).connections == 3
    assert grant(state, 8, wanted=8, mine=0, others=Others()).connections == 0


def test_throttles_escalate_within_the_repeat_window_and_halve_the_budget():
    state = SiteState("a.test", now=NOW)
    first = after_throttle(
        state, budget=8, retry_after=None, started_ago=0.1, backoff_base=2, pause_cap=600
    )
    assert first.strikes == 1 and first.cap is None and first.pause_left == 2
    later = SiteState(**{**first.__dict__, "now": NOW + 10})
    second = after_throttle(
        later, budget=8, retry_after=None, started_ago=0.1, backoff_base=2, pause_cap=600
    )
    assert second.strikes == 2 and second.cap == 4 and second.pause_left == 4
    assert second.budget(8) == 4


def test_a_throttle_of_a_request_sent_before_the_last_one_is_the_same_episode():
    state = after_throttle(
        SiteState("a.test", now=NOW),
        budget=8,
        retry_after=None,
        started_ago=0.0,
        backoff_base=2,
        pause_cap=600,
    )
    late = SiteState(**{**state.__dict__, "now": NOW + 1})
    same = after_throttle(
        late, budget=8, retry_after=None, started_ago=3.0, backoff_base=2, pause_cap=600
    )
    assert same == late  # no new strike, no longer pause
    longer = after_throttle(
        late, budget=8, retry_after=30, started_ago=3.0, backoff_base=2, pause_cap=600
    )
    assert longer.strikes == 1 and longer.paused_until == NOW + 31


def test_retry_after_is_capped_and_a_throttle_after_the_window_starts_over():
    state = SiteState("a.test", throttled_at=NOW - REPEAT_WINDOW_S - 1, strikes=3, now=NOW)
    after = after_throttle(
        state, budget=8, retry_after=10_000, started_ago=0.1, backoff_base=2, pause_cap=600
    )
    assert after.strikes == 1 and after.cap is None and after.pause_left == 600


def test_successes_earn_a_lowered_budget_back_one_step_per_cap():
    state = SiteState("a.test", cap=2, strikes=2, now=NOW)
    one = after_successes(state, 2, budget=4)
    assert one.cap == 3 and one.credit == 0 and one.strikes == 0
    two = after_successes(one, 2, budget=4)
    assert two.cap == 3 and two.credit == 2
    back = after_successes(two, 1, budget=4)
    assert back.cap is None and back.budget(4) == 4
    unlowered = SiteState("a.test", now=NOW)
    assert after_successes(unlowered, 100, budget=4) is unlowered


def test_with_learned_limits_a_throttle_keeps_no_cap_and_an_answer_ends_the_escalation():
    rule = {"budget": 64, "retry_after": None, "started_ago": 0.0, "backoff_base": 0.5}
    third = SiteState("a.test", throttled_at=NOW - 5, strikes=2, cap=16, credit=3, now=NOW)
    silent = after_throttle(third, pause_cap=3600.0, learned=True, **rule)
    assert silent.strikes == 3 and silent.pause_left == 2.0 and silent.cap is None
    assert silent.credit == 0
    answered = after_throttle(third, pause_cap=3600.0, learned=True, answered=True, **rule)
    assert answered.strikes == 1 and answered.pause_left == 0.5 and answered.cap is None
    fixed = after_throttle(third, pause_cap=3600.0, answered=True, **rule)
    assert fixed.strikes == 3 and fixed.cap == 8  # fixed budgets: credits end the escalation
