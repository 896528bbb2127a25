"""Development tools, not part of the product: never shipped in the wheel, never imported by it.

The loopback webs the tests, the benchmarks and the offline demo fetch from (``loopback_web``, a
small multi-host image web; the ``real_web`` package, one shaped like a real shard's),
their DNS server (``dns_server``), network namespaces to run a download in (``netns``), the
command-line protocol of their server processes (``commanded``), the generated sample shard
(``sample_shard``) and the offline demo (``demo``, what ``make demo`` runs).

These modules may import the ``dev`` extra's packages (dnslib, trustme, uvloop, ...), which
``mmc4_assets`` never does. ``make env`` puts the checkout on the venv's path, so this package
is importable there, as ``mmc4_assets_tests`` is.
"""
