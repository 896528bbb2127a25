"""Run health: a run that dies (kill -9, OOM, reboot, lost node) never holds the pipeline.

Dagster marks a run failed when its own process says so, or when the run launcher can check the
worker; neither happens for a CLI run, nor for the DefaultRunLauncher once its code server is
gone, so a dead run stays STARTED forever and keeps its shards and its place in the run queue.

Every step of this project therefore, through the `RunHealth` resource's `guard`:
- keeps a *worker record* in the instance's key-value store (the runs database: SQLite or
  Postgres): host, boot time, the run worker's and the step's process ids, a heartbeat every
  `heartbeat_seconds`, and the shards it writes with a bakery ticket (records.py, heartbeat.py);
- fails the runs it finds dead before it starts, and logs which and why (liveness.py judges,
  reaper.py fails);
- takes its turn on its shards: a step waits, asleep, for older tickets on the same shards held
  by live runs (Lamport's bakery over the store, turns.py), so two runs never write one shard at
  once.

A run is dead when its processes are gone (on this host: checked by pid and start time, at once)
or, for a run on another host, when its heartbeat is older than `dead_after_seconds`. A run of
these assets that never recorded a heartbeat counts as dead `dead_after_seconds` after it
started. `mmc4_assets.sensors.dead_runs_sensor` applies the same rule from the daemon every 30
seconds, for runs that nobody waits for but that still count against the run queue's pool limits.
"""

from mmc4_assets.run_health.liveness import Machine, death_reason
from mmc4_assets.run_health.records import (
    GUARDED_STEPS,
    LiveRun,
    WorkerRecord,
    live_runs,
    record_key,
)
from mmc4_assets.run_health.resource import RunHealth

__all__ = [
    "GUARDED_STEPS",
    "LiveRun",
    "Machine",
    "RunHealth",
    "WorkerRecord",
    "death_reason",
    "live_runs",
    "record_key",
]
