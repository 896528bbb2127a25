"""Politeness at corpus scale: sites, their budgets shared by every run, throttling, robots.txt.

``sites`` groups hosts by registrable domain; ``ledger`` keeps each site's connection slots and
throttle state where every run of the deployment sees them; ``broker`` is a run's one link to
it; ``gate`` is a fetch loop's view; ``robots`` and ``robots_cache`` read, obey and keep
robots.txt.
"""
