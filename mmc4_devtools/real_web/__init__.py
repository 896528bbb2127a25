"""A loopback web shaped like the one behind a real mmc4 shard, for the download benchmark.

Why: ``LoopbackWeb`` (8 fast hosts, plain HTTP) hides what a downloader meets on the real web:
thousands of hosts at two or three images each, a few CDNs holding many; names to resolve, some
slowly, some never; TLS on most hosts, each with its own small certificate; latency with a long
tail and a cost for every new connection; bodies that arrive at a few MB/s; hosts that refuse
connections or accept them and never answer; robots.txt files; photo-sized images. This web has
all of it, every knob in ``RealWebConfig``, and knows the outcome every URL should get.

- Each host has its own address in 127.77.0.0/16 (Linux routes all of 127/8 to lo) and one
  port shared by every host. With ``names`` (the default) URLs hold a DNS name that the web's
  own DNS server (``dns_server``) resolves, with a resolver's latency and failures; clients
  must resolve through it (``netns``: a namespace whose resolv.conf names it). Without, URLs
  hold the IP literal and no name is ever resolved.
- Names group into sites as on the real web (``sites``): CDNs behind several names of
  one site, private-suffix names that are each their own site, a long tail of one-host sites.
- HTTPS hosts present a small ECDSA certificate chosen by SNI, naming the host (a wildcard for
  a multi-name CDN); in IP mode, certificates with a few dozen IP SANs. All are signed by a
  throw-away CA made at start-up (``RealWeb.ca_file``); clients must be told to trust it.
- Images come from a small pool of photo-like pictures generated once and reused by every URL.
- The server runs in child processes (asyncio, uvloop when installed) so it never shares the
  client's GIL; it stops by itself after ``max_runtime_s`` or when its parent goes away. It
  counts, per site and per host, the requests in flight (``RealWeb.stats``).
- ``RealWeb.set_mode(latency=False, faults=False)`` serves the very same URLs at once and without
  any fault (dead and silent hosts answer, every name resolves, every robots.txt is a 404): a
  downloader's CPU-bound baseline.

    with RealWeb(RealWebConfig(images=200, hosts=40, names=False)) as web:
        for entry in web.entries():
            print(entry["url"], entry["expect"])

The modules, by job: ``config`` (the knobs), ``faults`` (faults and the outcomes they should
get), ``sites`` (host names, sites, robots.txt files), ``plan`` (which host holds which image,
and every fate), ``pool`` (the image pool), ``certificates`` (the CA, server certificates and
their SSLContexts), ``server``, ``responses`` and ``throttle`` (a server child's loop, what each
request gets, a throttled site), ``standins`` (stand-in pictures, tracking pixels, reused URLs:
``RealWebConfig.standins``, off by default), ``child`` (a server child process), ``web``
(``RealWeb``, the controller) and ``cli`` (``python -m mmc4_devtools.real_web``).
"""

from mmc4_devtools.real_web.certificates import (
    DEFAULT_SNI_NAME,
    certificate_file,
    certificate_groups,
    tls_contexts,
    write_certificates,
)
from mmc4_devtools.real_web.cli import main
from mmc4_devtools.real_web.config import OLD_SHAPE, RealWebConfig
from mmc4_devtools.real_web.faults import (
    DISALLOWED_OUTCOME,
    DNS_OUTCOME,
    FAULTS,
    HOST_OUTCOMES,
    OVERSIZE_BYTES,
    ROBOTS_5XX_OUTCOME,
    ROBOTS_5XX_STATUS,
)
from mmc4_devtools.real_web.plan import SUBNET, Host, Plan, PlannedImage, host_ip, make_plan
from mmc4_devtools.real_web.pool import photo, pool_key, render_pool_image, write_pool
from mmc4_devtools.real_web.web import RealWeb

__all__ = [
    "DEFAULT_SNI_NAME",
    "DISALLOWED_OUTCOME",
    "DNS_OUTCOME",
    "FAULTS",
    "HOST_OUTCOMES",
    "OLD_SHAPE",
    "OVERSIZE_BYTES",
    "ROBOTS_5XX_OUTCOME",
    "ROBOTS_5XX_STATUS",
    "SUBNET",
    "Host",
    "Plan",
    "PlannedImage",
    "RealWeb",
    "RealWebConfig",
    "certificate_file",
    "certificate_groups",
    "host_ip",
    "main",
    "make_plan",
    "photo",
    "pool_key",
    "render_pool_image",
    "tls_contexts",
    "write_certificates",
    "write_pool",
]
