"""The site ledger on SQLite and on a real PostgreSQL: slots, leases, throttling, recovery."""

from __future__ import annotations

import threading
import time

from mmc4_assets.downloader.politeness.capacity import Observation, SiteLimit
from mmc4_assets.downloader.politeness.ledger import SiteLedger
from mmc4_assets.downloader.politeness.rules import REPEAT_WINDOW_S

BACKOFF = {"backoff_base": 0.4, "pause_cap": 3600.0}


def held_now(url: str, site: str) -> int:
    probe = SiteLedger.open(url)
    try:
        with probe._transaction(write=False) as cursor:
            now = probe._now(cursor)
            cursor.execute(
                f"SELECT coalesce(sum(connections), 0) FROM mmc4_site_leases "
                f"WHERE site = {probe._marker} AND expires_at > {probe._marker}",
                [site, now],
            )
            return int(cursor.fetchone()[0])
    finally:
        probe.close()


def test_holders_racing_for_a_site_never_hold_more_than_its_budget(ledger_url):
    holders = [SiteLedger.open(ledger_url) for _ in range(6)]
    got: dict[int, int] = {}
    start = threading.Barrier(len(holders))

    def grab(number: int) -> None:
        start.wait()
        for _ in range(5):  # each asks again and again, as a starved run does
            held, _, _, _ = holders[number].sync(f"h{number}", {"wp.com": (8, 8)})
            got[number] = held["wp.com"]

    threads = [threading.Thread(target=grab, args=(n,)) for n in range(len(holders))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(got.values()) == 8 == held_now(ledger_url, "wp.com")  # never a ninth
    owner = next(n for n, count in got.items() if count)
    holders[owner].sync(f"h{owner}", {"wp.com": (got[owner] - 1, 8)})  # gives one back
    others = [n for n in range(len(holders)) if n != owner]
    held, _, _, _ = holders[others[0]].sync(f"h{others[0]}", {"wp.com": (8, 8)})
    assert held["wp.com"] == got[others[0]] + 1 and held_now(ledger_url, "wp.com") == 8
    for ledger in holders:
        ledger.close()


def test_a_dead_holders_leases_stop_counting_when_they_expire(ledger_url):
    dead = SiteLedger.open(ledger_url, lease_seconds=0.5)
    alive = SiteLedger.open(ledger_url, lease_seconds=30)
    assert dead.sync("dead", {"example.org": (2, 2)})[0] == {"example.org": 2}
    dead.close()  # it never renews nor releases: a kill -9
    assert alive.sync("alive", {"example.org": (2, 2)})[0] == {"example.org": 0}
    time.sleep(0.6)
    assert alive.sync("alive", {"example.org": (2, 2)}, renew=True)[0] == {"example.org": 2}
    alive.release_all("alive")
    assert held_now(ledger_url, "example.org") == 0
    alive.close()


def test_throttling_pauses_the_site_and_repeats_halve_its_budget(ledger_url):
    ledger = SiteLedger.open(ledger_url)
    assert ledger.sync("a", {"cdn.net": (8, 8)})[0] == {"cdn.net": 8}
    first = ledger.throttle("cdn.net", budget=8, retry_after=None, started_ago=0.0, **BACKOFF)
    assert first.strikes == 1 and first.cap is None and 0.2 < first.pause_left <= 0.401
    # Answers to requests sent before the throttle was recorded belong to the same episode.
    same = ledger.throttle("cdn.net", budget=8, retry_after=None, started_ago=5.0, **BACKOFF)
    assert same.strikes == 1 and same.cap is None
    other = SiteLedger.open(ledger_url)
    granted, states, _, _ = other.sync("b", {"cdn.net": (1, 8)})
    assert granted == {"cdn.net": 0} and states["cdn.net"].pause_left > 0  # none while paused
    time.sleep(first.pause_left + 0.05)
    repeat = ledger.throttle("cdn.net", budget=8, retry_after=None, started_ago=0.0, **BACKOFF)
    assert repeat.strikes == 2 and repeat.cap == 4 and 0.6 < repeat.pause_left <= 0.801
    assert repeat.budget(8) == 4
    held, states, _, _ = ledger.sync(
        "a", {"cdn.net": (8, 8)}, renew=True
    )  # shrinks to the new budget
    assert held == {"cdn.net": 4} and states["cdn.net"].cap == 4
    # A late answer of that episode may lengthen the pause to its Retry-After, capped.
    capped = ledger.throttle(
        "cdn.net", budget=8, retry_after=10_000, started_ago=5.0, backoff_base=0.4, pause_cap=2.0
    )
    assert 1.5 < capped.pause_left <= 2.001 and capped.cap == 4  # same episode: no new cut
    changed, _ = other.changed_since(None)
    assert "cdn.net" in {state.site for state in changed}
    other.close()
    ledger.close()


def learned_limit(ledger: SiteLedger, site: str) -> int:
    return ledger.sync("probe", {site: (0, 64, 4)}).limits[site]


def test_learned_limits_halve_on_throttles_that_come_often_not_on_a_busy_sites_odd_one(
    ledger_url,
):
    """Adaptive limits (``start`` given): a throttle pauses the site as told; the learned limit
    halves unless the site answered many requests since its last throttle, and no ``cap`` is
    kept beside it (docs/politeness.md)."""
    ledger = SiteLedger.open(ledger_url)
    with ledger._transaction(write=True) as cursor:
        now = ledger._now(cursor)
        ledger._write_limits(cursor, [SiteLimit("cdn.net", 40.0, 0.3, observed_at=now, peak=40)])
    adaptive = {"budget": 64, "started_ago": 0.0, "start": 4, **BACKOFF}
    a_second_of_answers = Observation(bodies=200, fast=0.25, median=0.3, slow=0.35)
    ledger.observe({"cdn.net": (a_second_of_answers, 64, 4)})
    odd = ledger.throttle("cdn.net", retry_after=1.0, **adaptive)
    assert 0.9 < odd.pause_left <= 1.001 and odd.cap is None
    assert learned_limit(ledger, "cdn.net") == 40  # one throttle in 200 answers only pauses
    granted, _, _, _ = ledger.sync("a", {"cdn.net": (8, 64, 4)})
    assert granted == {"cdn.net": 0}  # none while paused, whatever the limit
    time.sleep(odd.pause_left + 0.05)
    again = ledger.throttle("cdn.net", retry_after=0.0, **adaptive)  # nothing answered since
    assert again.strikes == 2 and again.cap is None and learned_limit(ledger, "cdn.net") == 20
    ledger.observe({"cdn.net": (a_second_of_answers, 64, 4)})
    answered = ledger.throttle("cdn.net", retry_after=None, **adaptive)
    assert answered.strikes == 1 and 0.3 < answered.pause_left <= 0.401  # escalation ends
    ledger.close()


def test_a_ledger_made_before_a_column_was_added_gets_it(ledger_url):
    ledger = SiteLedger.open(ledger_url)
    with ledger._transaction(write=True) as cursor:
        cursor.execute("ALTER TABLE mmc4_site_limits DROP COLUMN answers")
    ledger.close()
    reopened = SiteLedger.open(ledger_url)
    seen = Observation(bodies=20, fast=0.25, median=0.3, slow=0.35)
    assert reopened.observe({"cdn.net": (seen, 64, 4)})["cdn.net"].answers == 20
    with reopened._transaction(write=False) as cursor:
        cursor.execute("SELECT answers FROM mmc4_site_limits WHERE site = 'cdn.net'")
        assert cursor.fetchone()[0] == 20
    reopened.close()


def test_a_sites_state_unchanged_for_a_day_is_forgotten_unless_paused(ledger_url):
    ledger = SiteLedger.open(ledger_url)
    ledger.throttle("paused.net", budget=8, retry_after=3000.0, started_ago=0.0, **BACKOFF)
    ledger.throttle("calm.net", budget=8, retry_after=None, started_ago=0.0, **BACKOFF)
    ledger.throttle("fresh.net", budget=8, retry_after=None, started_ago=0.0, **BACKOFF)
    time.sleep(0.45)  # calm.net's and fresh.net's pauses (0.4 s) are over
    mark = ledger._marker
    with ledger._transaction(write=True) as cursor:  # two of them last changed two days ago
        cursor.execute(
            f"UPDATE mmc4_site_state SET changed_at = {mark} WHERE site <> {mark}",
            [time.time() - 48 * 3600, "fresh.net"],
        )
    seen = Observation(bodies=20, fast=0.25, median=0.3, slow=0.35)
    ledger.observe({"cdn.net": (seen, 64, 4)})
    with ledger._transaction(write=False) as cursor:
        cursor.execute("SELECT site FROM mmc4_site_state")
        assert {row[0] for row in cursor.fetchall()} == {"paused.net", "fresh.net"}
    assert ledger.states(["calm.net"])["calm.net"].strikes == 0  # starts over as a new site
    ledger.close()


def test_successes_earn_a_lowered_budget_back(ledger_url):
    ledger = SiteLedger.open(ledger_url)
    ledger.throttle("s.org", budget=8, retry_after=0.0, started_ago=0.0, **BACKOFF)
    state = ledger.throttle("s.org", budget=8, retry_after=0.0, started_ago=0.0, **BACKOFF)
    assert state.cap == 4 and REPEAT_WINDOW_S > 1
    assert ledger.credit("s.org", 3, budget=8).cap == 4
    assert ledger.credit("s.org", 1, budget=8).cap == 5  # one more per `cap` successes
    assert ledger.credit("s.org", 5 + 6 + 7, budget=8).cap is None  # back to the full budget
    ledger.close()


def test_successes_after_a_pause_end_the_escalation_not_the_budget_cut(ledger_url):
    """A site that throttles again and again without answering in between is paused longer each
    time; one that answered in between (a one-off 503 among many images) is paused for the base
    time again, though its budget is still halved."""
    ledger = SiteLedger.open(ledger_url)
    base = {"retry_after": None, "started_ago": 0.0, "backoff_base": 0.2, "pause_cap": 3600.0}
    ledger.throttle("s.org", budget=8, **base)
    time.sleep(0.25)
    second = ledger.throttle("s.org", budget=8, **base)
    assert second.strikes == 2 and 0.3 < second.pause_left <= 0.401 and second.cap == 4
    time.sleep(second.pause_left + 0.05)
    third = ledger.throttle("s.org", budget=8, **base)  # nothing answered in between
    assert third.strikes == 3 and 0.7 < third.pause_left <= 0.801 and third.cap == 2
    time.sleep(third.pause_left + 0.05)
    assert ledger.credit("s.org", 1, budget=8).strikes == 0  # it answered after the pause
    fourth = ledger.throttle("s.org", budget=8, **base)
    assert fourth.strikes == 1 and 0.1 < fourth.pause_left <= 0.201 and fourth.cap == 1
    ledger.close()


def test_the_ledger_does_not_wait_for_durable_commits(ledger_url):
    """Runs commit often and a crash loses nothing that matters (leases expire): neither
    SQLite nor Postgres is asked to flush to disk at every commit."""
    ledger = SiteLedger.open(ledger_url)
    try:
        with ledger._transaction(write=False) as cursor:
            if ledger._marker == "%s":
                cursor.execute("SHOW synchronous_commit")
                assert cursor.fetchone()[0] == "off"
            else:
                cursor.execute("PRAGMA synchronous")
                assert cursor.fetchone()[0] == 0  # OFF
    finally:
        ledger.close()


def test_a_run_waiting_for_a_site_gets_a_fair_share_as_the_others_give_back(ledger_url):
    """First come is not served forever: a run that holds all of a site's budget is told its
    share once another waits, and what it gives back goes to the one waiting."""
    first, second = SiteLedger.open(ledger_url), SiteLedger.open(ledger_url)
    assert first.sync("a", {"wp.com": (8, 8)})[0] == {"wp.com": 8}
    held, _, shares, _ = second.sync("b", {"wp.com": (8, 8)})
    assert held == {"wp.com": 0} and shares == {}  # it waits (a row at 0 says so)
    held, _, shares, _ = first.sync("a", {"wp.com": (8, 8)}, renew=True)
    assert held == {"wp.com": 8} and shares == {"wp.com": 4}  # keeps what is in use
    first.sync("a", {"wp.com": (4, 8)}, fewer={"wp.com": 4})  # its requests ended: 4 back
    held, _, _, _ = second.sync("b", {"wp.com": (8, 8)})
    assert held == {"wp.com": 4} and held_now(ledger_url, "wp.com") == 8
    # Neither grows past the budget; the one still short keeps asking.
    held, _, shares, _ = first.sync("a", {"wp.com": (8, 8)})
    assert held == {"wp.com": 4} and shares == {"wp.com": 4}
    for ledger, holder in ((first, "a"), (second, "b")):
        ledger.release_all(holder)
        ledger.close()
    assert held_now(ledger_url, "wp.com") == 0


def test_a_run_short_of_a_site_others_hold_tells_them_at_once(ledger_url):
    """The holders of a site learn that another run waits from their poll of changed sites
    (a tenth of a second), not at their next lease renewal (after which the waiting run may
    have given its images up)."""
    first, second = SiteLedger.open(ledger_url), SiteLedger.open(ledger_url)
    first.sync("a", {"wp.com": (8, 8), "other.org": (2, 8)})
    _, since = first.changed_since(None)
    time.sleep(1.1)  # past the poll's one-second overlap
    assert first.changed_since(since)[0] == []
    second.sync("b", {"other.org": (2, 8)})  # room left there: nobody is told
    assert first.changed_since(since)[0] == []
    second.sync("b", {"wp.com": (8, 8)})  # short: the holder is told
    changed, _ = first.changed_since(since)
    assert [state.site for state in changed] == ["wp.com"]
    for ledger, holder in ((first, "a"), (second, "b")):
        ledger.release_all(holder)
        ledger.close()


def test_a_young_site_grows_for_a_run_alone_not_while_runs_share_its_first_burst(ledger_url):
    """While other runs may still report a site's first answers (docs/politeness.md, "Grow"),
    the ledger does not grow its limit; a run alone at the site holds its whole first burst."""
    ledger = SiteLedger.open(ledger_url)
    first_report = Observation(bodies=5, fast=0.3, median=0.3, slow=0.3, least=0.3)
    assert ledger.sync("a", {"alone.test": (8, 64, 4)})[0] == {"alone.test": 4}
    assert ledger.observe({"alone.test": (first_report, 64, 4)})["alone.test"].limit == 8
    assert ledger.sync("a", {"shared.test": (8, 64, 4)})[0] == {"shared.test": 4}
    assert ledger.sync("b", {"shared.test": (8, 64, 4)})[0] == {"shared.test": 0}  # it waits
    assert ledger.observe({"shared.test": (first_report, 64, 4)})["shared.test"].limit == 4
    for holder in ("a", "b"):
        ledger.release_all(holder)
    ledger.close()
