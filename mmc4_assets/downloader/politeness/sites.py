"""Sites: the unit of politeness. Hosts are grouped by registrable domain (the Public Suffix List).

Why not host names: one operator often serves images from many names (``i0.wp.com`` …
``i3.wp.com``, ``lh3`` … ``lh6.googleusercontent.com``), and a limit per name multiplies what
that operator sees. The PSL's private section keeps tenants of shared platforms apart
(``d1x.cloudfront.net`` and ``d2y.cloudfront.net`` are two customers, two sites). The list
ships inside the ``publicsuffixlist`` package; it is never downloaded at run time.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from publicsuffixlist import PublicSuffixList

from ..fetching.netguard import ip_literal


@functools.cache
def _suffix_list() -> PublicSuffixList:
    return PublicSuffixList()  # the list bundled with the package, private section included


@functools.lru_cache(maxsize=65_536)
def site_of(host: str) -> str:
    """The site ``host`` belongs to: its registrable domain, or the host itself.

    An IP literal is its own site. A name under a TLD the list does not know falls back to its
    last two labels (the PSL's default rule ``*``). A name that is itself a public suffix, or a
    single label, stands alone.
    """
    host = host.strip().rstrip(".").lower()
    if not host:
        return ""
    address = ip_literal(host)
    if address is not None:
        return address
    try:
        registrable = _suffix_list().privatesuffix(host)
    except (ValueError, UnicodeError):
        registrable = None
    return registrable or host


class SiteBudgets:
    """Connections each site may have open across every run.

    Adaptive (the default): each site's limit is learned from its answers (``capacity``),
    starting at ``default`` (``per_site``) and never above its ceiling: ``ceiling`` for every
    site, or the site's entry in ``overrides`` (``site_budgets``), which also lowers its start.
    Not adaptive: ``default`` and ``overrides`` are fixed budgets.
    """

    def __init__(
        self,
        default: int,
        overrides: Mapping[str, int] | None = None,
        *,
        ceiling: int | None = None,
        adaptive: bool = False,
    ) -> None:
        if default < 1:
            raise ValueError(f"per_site must be at least 1, not {default}")
        self.default = default
        self.adaptive = adaptive
        self.ceiling = max(default, ceiling or default)
        self.overrides: dict[str, int] = {}
        for name, budget in (overrides or {}).items():
            if int(budget) < 1:
                raise ValueError(f"site budget for {name!r} must be at least 1, not {budget}")
            self.overrides[site_of(name)] = int(budget)  # "i0.wp.com" means its site, wp.com

    def __call__(self, site: str) -> int:
        """The most connections the site may ever have: its ceiling, or its fixed budget."""
        fixed = self.ceiling if self.adaptive else self.default
        return self.overrides.get(site, fixed)

    def start(self, site: str) -> int | None:
        """The limit before anything is learned (None: not adaptive, the budget is fixed)."""
        if not self.adaptive:
            return None
        return min(self.default, self(site))


def parse_site_budgets(text: str) -> dict[str, int]:
    """``"wp.com=16, example.org=2"`` as a mapping (the form of MMC4_SITE_BUDGETS).

    Raises ValueError naming the entry that is not ``site=number``.
    """
    budgets: dict[str, int] = {}
    for entry in text.replace(";", ",").split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, value = entry.partition("=")
        if not sep or not name.strip() or not value.strip().isdigit():
            raise ValueError(f"site budget {entry!r} is not of the form site=number")
        budgets[name.strip()] = int(value)
    return budgets
