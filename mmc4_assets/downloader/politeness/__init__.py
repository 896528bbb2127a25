"""Politeness at corpus scale: sites, their budgets shared by every run, throttling, robots.txt.

``sites`` groups hosts by registrable domain; ``ledger`` keeps each site's connection leases and
throttle state where every run of the deployment sees them (in a database of
``ledger_backends``), by the pure ``rules``; ``broker`` is a run's one link to it; ``gate`` is
a fetch loop's view, talking to its broker in the typed ``messages``; ``robots`` and
``robots_cache`` read, obey and keep robots.txt.
"""

# What politeness did in a run, as the engine counts it (download_shard's ``stats``, and the
# download step's metadata).
COUNTERS = (
    "robots_txt_fetched",  # robots.txt requests answered or failed (a 429/503 is asked again)
    "robots_txt_from_cache",  # origins whose robots.txt came from the ledger's cache
    "robots_txt_unavailable",  # origins whose robots.txt failed (5xx, unreachable): retried later
    "throttles",  # 429/503 answers received
    "sites_paused",  # sites this run saw paused, by its own throttles or another run's
    "origins_with_crawl_delay",  # origins whose robots.txt asks for a Crawl-delay (spaced)
    "most_requests_per_site",  # the most requests this run had in flight to one site
    "request_seconds",  # time requests were in flight, summed (/ wall: the mean in flight)
    "ledger_transactions",  # the cost of sharing budgets: transactions with the site ledger
    "ledger_ms",  # and the time they took
    "ledger_errors",  # failed transactions (the ledger unreachable), retried
)
