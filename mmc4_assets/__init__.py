"""The mmc4 corpus pipeline as Dagster assets.

`defs` is the code location's Definitions, so `dagster ... -m mmc4_assets` and `dg` find it here.
It is loaded on first use, so importing the Dagster-free corpus logic stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg

    defs: dg.Definitions

__all__ = ["defs"]


def __getattr__(name: str):
    if name == "defs":
        from mmc4_assets.definitions import defs

        return defs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "defs"])
