"""Sites are registrable domains (the Public Suffix List shipped in the package)."""

from __future__ import annotations

import pytest

from mmc4_assets.downloader.politeness.sites import SiteBudgets, parse_site_budgets, site_of


@pytest.mark.parametrize(
    ("host", "site"),
    [
        ("i0.wp.com", "wp.com"),
        ("I3.WP.COM.", "wp.com"),
        ("lh3.googleusercontent.com", "googleusercontent.com"),
        ("lh6.googleusercontent.com", "googleusercontent.com"),
        ("www.example.co.uk", "example.co.uk"),
        # The private section keeps tenants of shared platforms apart.
        ("d1x.cloudfront.net", "d1x.cloudfront.net"),
        ("d2y.cloudfront.net", "d2y.cloudfront.net"),
        ("img.alice.github.io", "alice.github.io"),
        # A TLD the list does not know: its last two labels (the default rule "*").
        ("a.b.images.internal-cdn", "images.internal-cdn"),
        # Alone: a public suffix itself, a single label, IP literals.
        ("github.io", "github.io"),
        ("localhost", "localhost"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
    ],
)
def test_site_of(host: str, site: str):
    assert site_of(host) == site


def test_budgets_default_and_overrides_by_site():
    budgets = SiteBudgets(8, {"i0.wp.com": 16, "example.org": 2})
    assert budgets("wp.com") == 16  # a host names its site
    assert budgets("example.org") == 2 and budgets("other.net") == 8
    with pytest.raises(ValueError, match="at least 1"):
        SiteBudgets(8, {"wp.com": 0})


def test_budgets_from_text():
    assert parse_site_budgets(" wp.com=16, example.org=2;x.net=3 ,") == {
        "wp.com": 16,
        "example.org": 2,
        "x.net": 3,
    }
    assert parse_site_budgets("") == {}
    with pytest.raises(ValueError, match="'wp.com:16' is not of the form site=number"):
        parse_site_budgets("wp.com:16")
