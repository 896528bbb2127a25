"""The run queue's pools made known to the instance before its first queued run.

Why: the queue daemon of Dagster 1.13 reads which pools have a limit *before* it creates the
limit (from ``default_limit`` in dagster.yaml) of a pool it meets for the first time, so in its
first tick on a new instance every queued run of that pool passes as unlimited: a UI backfill's
first 4 runs all downloaded at once, on 2 cores (dagster-io/dagster#31936 shows the symptom).
From the next tick on the limit holds. Creating the pool's limit first closes that gap; a limit
an operator set (``dagster instance concurrency set mmc4_download 2``) is kept.

``make ui`` runs this first (``python -m mmc4_assets.run_health.pools``); so should any other
way of starting a daemon on a new instance (docs/operating.md).
"""

from __future__ import annotations

import dagster as dg

DOWNLOAD_POOL = "mmc4_download"  # the download step's pool (assets/images.py)
POOLS = (DOWNLOAD_POOL,)


def ensure_pool_limits(instance: dg.DagsterInstance) -> list[str]:
    """Give each of the project's pools that has no limit yet its default one; returns those."""
    storage = instance.event_log_storage
    known = storage.get_concurrency_keys()
    created = []
    for pool in POOLS:
        if pool not in known and storage.initialize_concurrency_limit_to_default(pool):
            created.append(pool)
    return created


if __name__ == "__main__":
    with dg.DagsterInstance.get() as current:
        for name in ensure_pool_limits(current):
            info = current.event_log_storage.get_concurrency_info(name)
            print(f"pool {name}: limit {info.slot_count}")
