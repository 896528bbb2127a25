"""Whether a run is dead: the rule, from its worker records, this host and the clock.

`death_reason` is the policy; the only I/O is asking this host's process table about the
processes a record names (a pid alone is not enough: the OS reuses them, so the start time too).
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Sequence

import dagster as dg
import psutil

from mmc4_assets.run_health.records import GUARDED_ASSETS, WorkerRecord

_PID_START_TOLERANCE = 1.0  # seconds: psutil derives start times from boot time and clock ticks


def process_identity(pid: int) -> tuple[int, float]:
    """(pid, start time): what a worker record stores to recognise its process later."""
    return pid, psutil.Process(pid).create_time()


def _alive(pid: int, started: float) -> bool:
    """The process is running and is the one recorded (not a later process given the same pid)."""
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - started) > _PID_START_TOLERANCE:
            return False
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


@dataclasses.dataclass(frozen=True)
class Machine:
    """This host, as worker records name it: its name and boot time tell a reboot apart."""

    host: str
    boot: float

    @classmethod
    def here(cls) -> Machine:
        return cls(socket.gethostname(), psutil.boot_time())


def death_reason(
    run: dg.RunRecord,
    records: Sequence[WorkerRecord],
    *,
    now: float,
    dead_after: float,
    here: Machine,
) -> str | None:
    """Why this in-progress run is dead, or None while it may be alive."""
    if not records:
        dagster_run = run.dagster_run
        selection = dagster_run.asset_selection or set()
        if not selection & GUARDED_ASSETS:
            return None  # not a run of these assets' steps: not ours to judge
        started = run.start_time or run.create_timestamp.timestamp()
        if now - started > dead_after:
            return (
                f"no step of it reported a heartbeat in the {now - started:.0f} s since it started"
            )
        return None
    # Records of this host are checked by process; others (and any without a process) by beat.
    local = [r for r in records if r.host == here.host and r.processes]
    remote = [r for r in records if r not in local]
    for record in local:
        if abs(record.boot - here.boot) > _PID_START_TOLERANCE:
            continue  # recorded before this host rebooted
        if any(_alive(pid, started) for pid, started in record.processes):
            return None
    if remote:
        latest = max(r.beat for r in remote)
        if now - latest <= dead_after:
            return None
        return (
            f"no heartbeat from {remote[-1].describe()} for {now - latest:.0f} s "
            f"(a run is declared dead after {dead_after:.0f} s)"
        )
    record = local[-1]
    if abs(record.boot - here.boot) > _PID_START_TOLERANCE:
        return f"{record.host} rebooted since it started ({record.describe()})"
    return f"its processes are gone ({record.describe()})"
