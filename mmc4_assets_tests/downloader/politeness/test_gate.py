"""The fetch loop's view of a site's budget: never more than the ledger may have left it."""

from __future__ import annotations

from mmc4_assets.downloader.politeness.gate import SiteGate
from mmc4_assets.downloader.politeness.messages import Held, Want
from mmc4_assets.downloader.politeness.sites import SiteBudgets


def _gate() -> tuple[SiteGate, list]:
    sent: list = []
    gate = SiteGate(sent.extend, SiteBudgets(8), backoff_base=0.5, clock=lambda: 100.0)
    return gate, sent


def _answer(
    gate: SiteGate, sent: list, count: int, want_index: int, share: int | None = None
) -> None:
    """The broker's answer to the ``want_index``-th want sent."""
    want = [message for message in sent if isinstance(message, Want)][want_index]
    gate.receive([Held(want.site, count, False, want.sequence, share)])


def _granted(count: int) -> tuple[SiteGate, list]:
    """A gate that asked for ``count`` connections of wp.com and got them."""
    gate, sent = _gate()
    gate.want("wp.com", count)
    gate.flush(force=True)
    _answer(gate, sent, count, 0)
    return gate, sent


def test_what_a_loop_gives_back_stops_counting_until_the_broker_grants_it_again():
    gate, sent = _granted(8)
    assert gate.limit("wp.com", 100.0) == 8
    # Fewer images left: the loop gives two connections back (the ledger may hand them to
    # another run at once) ...
    gate.want("wp.com", 6)
    assert gate.limit("wp.com", 100.0) == 6
    # ... then a retry wants them again: until the broker answers this want, the loop may not
    # count on the old grant of 8.
    gate.want("wp.com", 8)
    gate.flush(force=True)
    assert gate.limit("wp.com", 100.0) == 6
    _answer(gate, sent, 6, 1)  # the answer to the give-back: an older want, ignored
    assert gate.limit("wp.com", 100.0) == 6
    _answer(gate, sent, 7, 2)  # another run kept one of the two
    assert gate.limit("wp.com", 100.0) == 7


def test_giving_everything_back_leaves_nothing_to_use():
    gate, sent = _granted(4)
    gate.want("wp.com", 0)
    gate.want("wp.com", 4)
    assert gate.limit("wp.com", 100.0) == 0


def test_while_other_runs_wait_a_loop_comes_down_to_its_share_as_requests_end():
    gate, sent = _granted(8)
    _answer(gate, sent, 8, 0, share=2)  # a renewal: two other runs wait for wp.com
    assert "wp.com" in gate.changed
    gate.want("wp.com", 30, in_use=8)  # eight requests still in flight: nothing given back
    assert gate.wanted["wp.com"] == 8
    # ... but none starts above the share: a slot freed is not reused, it goes back.
    assert gate.limit("wp.com", 100.0) == 2
    gate.want("wp.com", 30, in_use=5)  # three ended: three go back, not more
    assert gate.limit("wp.com", 100.0) == 2 and gate.wanted["wp.com"] == 5
    gate.want("wp.com", 30, in_use=1)
    assert gate.limit("wp.com", 100.0) == 2  # its share, never below
    gate.flush(force=True)
    _answer(gate, sent, 2, 2, share=None)  # nobody waits any more: it may ask for more again
    gate.want("wp.com", 30, in_use=2)
    assert gate.wanted["wp.com"] == 8
