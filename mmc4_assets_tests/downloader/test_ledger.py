"""The site ledger on SQLite and on a real PostgreSQL: slots, leases, throttling, recovery."""

from __future__ import annotations

import threading
import time

from mmc4_assets.downloader.politeness.ledger import REPEAT_WINDOW_S, SiteLedger

BACKOFF = {"backoff_base": 0.4, "pause_cap": 3600.0}


def held_now(url: str, site: str) -> int:
    probe = SiteLedger.open(url)
    try:
        with probe._transaction(write=False) as cursor:
            now = probe._now(cursor)
            cursor.execute(
                f"SELECT count(*) FROM mmc4_site_slots WHERE site = {probe._marker} "
                f"AND expires_at > {probe._marker}",
                [site, now],
            )
            return int(cursor.fetchone()[0])
    finally:
        probe.close()


def test_holders_racing_for_a_site_never_hold_more_than_its_budget(ledger_url):
    holders = [SiteLedger.open(ledger_url) for _ in range(6)]
    got: dict[int, list[int]] = {}
    start = threading.Barrier(len(holders))

    def grab(number: int) -> None:
        start.wait()
        slots = []
        for _ in range(5):  # each asks again and again, as a starved run does
            granted, _ = holders[number].acquire(f"h{number}", {"wp.com": (8 - len(slots), 8)})
            slots += granted.get("wp.com", [])
        got[number] = slots

    threads = [threading.Thread(target=grab, args=(n,)) for n in range(len(holders))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = sorted(slot for slots in got.values() for slot in slots)
    assert everything == list(range(8))  # each slot once, never a ninth
    assert held_now(ledger_url, "wp.com") == 8
    owner = next(n for n, slots in got.items() if slots)
    holders[owner].release(f"h{owner}", {"wp.com": got[owner][:1]})
    others = [n for n in range(len(holders)) if n != owner]
    granted, _ = holders[others[0]].acquire(f"h{others[0]}", {"wp.com": (8, 8)})
    assert granted == {"wp.com": got[owner][:1]}
    for ledger in holders:
        ledger.close()


def test_a_dead_holders_slots_come_back_when_its_lease_expires(ledger_url):
    dead = SiteLedger.open(ledger_url, lease_seconds=0.5)
    alive = SiteLedger.open(ledger_url, lease_seconds=30)
    assert dead.acquire("dead", {"example.org": (2, 2)})[0] == {"example.org": [0, 1]}
    dead.close()  # it never renews nor releases: a kill -9
    assert alive.acquire("alive", {"example.org": (2, 2)})[0] == {}
    time.sleep(0.6)
    assert alive.acquire("alive", {"example.org": (2, 2)})[0] == {"example.org": [0, 1]}
    held, _ = alive.renew("alive", {"example.org": 2})
    assert held == {"example.org": [0, 1]}
    alive.release_all("alive")
    assert held_now(ledger_url, "example.org") == 0
    alive.close()


def test_throttling_pauses_the_site_and_repeats_halve_its_budget(ledger_url):
    ledger = SiteLedger.open(ledger_url)
    assert ledger.acquire("a", {"cdn.net": (8, 8)})[0] == {"cdn.net": list(range(8))}
    first = ledger.throttle("cdn.net", budget=8, retry_after=None, started_ago=0.0, **BACKOFF)
    assert first.strikes == 1 and first.cap is None and 0.2 < first.pause_left <= 0.401
    # Answers to requests sent before the throttle was recorded belong to the same episode.
    same = ledger.throttle("cdn.net", budget=8, retry_after=None, started_ago=5.0, **BACKOFF)
    assert same.strikes == 1 and same.cap is None
    other = SiteLedger.open(ledger_url)
    granted, states = other.acquire("b", {"cdn.net": (1, 8)})
    assert granted == {} and states["cdn.net"].pause_left > 0  # nobody starts during a pause
    time.sleep(first.pause_left + 0.05)
    repeat = ledger.throttle("cdn.net", budget=8, retry_after=None, started_ago=0.0, **BACKOFF)
    assert repeat.strikes == 2 and repeat.cap == 4 and 0.6 < repeat.pause_left <= 0.801
    assert repeat.budget(8) == 4
    held, states = ledger.renew("a", {"cdn.net": 8})  # slots above the new budget go back
    assert held == {"cdn.net": [0, 1, 2, 3]} and states["cdn.net"].cap == 4
    # A late answer of that episode may lengthen the pause to its Retry-After, capped.
    capped = ledger.throttle(
        "cdn.net", budget=8, retry_after=10_000, started_ago=5.0, backoff_base=0.4, pause_cap=2.0
    )
    assert 1.5 < capped.pause_left <= 2.001 and capped.cap == 4  # same episode: no new cut
    changed, _ = other.changed_since(None)
    assert "cdn.net" in {state.site for state in changed}
    other.close()
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


def test_a_crawl_delay_means_one_connection(ledger_url):
    ledger = SiteLedger.open(ledger_url)
    ledger.set_crawl_delay("slow.org", 2.0)
    granted, states = ledger.acquire("a", {"slow.org": (8, 8)})
    assert granted == {"slow.org": [0]} and states["slow.org"].budget(8) == 1
    ledger.rest("slow.org", 2.0)
    assert ledger.states(["slow.org"])["slow.org"].pause_left > 1.5
    ledger.close()
