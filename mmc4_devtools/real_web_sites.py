"""The old path of ``mmc4_devtools.real_web.sites`` (host names, sites, robots.txt files), kept
for its importers; new code imports from ``mmc4_devtools.real_web.sites``."""

from mmc4_devtools.real_web.sites import (
    CDN_GROUPS,
    CDN_NAMES,
    PRODUCT_TOKEN,
    ROBOTS_FILES,
    ROBOTS_HTML,
    TAIL_KINDS,
    TLDS,
    RobotsFile,
    certificate_name,
    host_names,
    site_of,
)

__all__ = [
    "CDN_GROUPS",
    "CDN_NAMES",
    "PRODUCT_TOKEN",
    "ROBOTS_FILES",
    "ROBOTS_HTML",
    "TAIL_KINDS",
    "TLDS",
    "RobotsFile",
    "certificate_name",
    "host_names",
    "site_of",
]
