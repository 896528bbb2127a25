"""The RunHealth resource: what every step wraps its work in (see the package doc)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Iterable, Iterator, Sequence

import dagster as dg
import psutil
from pydantic import Field

from mmc4_assets.run_health.heartbeat import Heartbeat
from mmc4_assets.run_health.liveness import Machine, death_reason, process_identity
from mmc4_assets.run_health.reaper import fail_dead_run
from mmc4_assets.run_health.records import GUARDED_STEPS, LiveRun, WorkerRecord, live_runs, step_key
from mmc4_assets.run_health.turns import take_turn


class RunHealth(dg.ConfigurableResource):
    """Heartbeats, dead-run cleanup and per-shard turns for every step."""

    heartbeat_seconds: float = Field(
        default=10.0, description="How often a running step records that it is alive."
    )
    dead_after_seconds: float = Field(
        default=120.0,
        description="A run on another host with no heartbeat for this long is declared dead "
        "(runs on this host are checked by process id at once).",
    )
    poll_seconds: float = Field(
        default=2.0, description="How often a step waiting for its shards checks again."
    )

    def reap_dead_runs(
        self,
        instance: dg.DagsterInstance,
        by: str,
        runs: Iterable[LiveRun] | None = None,
    ) -> list[str]:
        """Fail every dead run among `runs` (default: all live runs); one line per run failed."""
        cleaned = []
        for run in live_runs(instance) if runs is None else runs:
            reason = self.death_reason(run)
            line = fail_dead_run(instance, run, reason, by) if reason else None
            if line:
                cleaned.append(line)
        return cleaned

    def death_reason(self, run: LiveRun) -> str | None:
        return death_reason(
            run.record,
            list(run.steps.values()),
            now=time.time(),
            dead_after=self.dead_after_seconds,
            here=Machine.here(),
        )

    @contextlib.contextmanager
    def guard(
        self, context: dg.AssetExecutionContext, shards: Sequence[int] = ()
    ) -> Iterator[None]:
        """Around a step's work: heartbeat, clean up dead runs, wait for this step's shards."""
        instance, run_id, step = context.instance, context.run.run_id, step_key(context)
        if step not in GUARDED_STEPS:
            raise ValueError(f"{step} is not in run_health.GUARDED_STEPS")
        heart = Heartbeat(context, _first_record(shards), self.heartbeat_seconds)
        with heart:
            cleaned = self.reap_dead_runs(instance, by=f"run {run_id[:8]} ({step})")
            for line in cleaned:
                context.log.warning(f"cleaned up dead {line}")
            if shards:
                take_turn(
                    context,
                    heart,
                    step,
                    set(shards),
                    death_reason=self.death_reason,
                    poll_seconds=self.poll_seconds,
                )
            yield


def _first_record(shards: Sequence[int]) -> WorkerRecord:
    machine = Machine.here()
    # A step of the multiprocess executor runs in a child of the run worker: while the run
    # worker lives, the run is alive between steps too. (A run worker started by the code
    # server with the in-process executor names the code server here, which itself fails
    # the run when its run worker dies.)
    parent = multiprocessing.parent_process()
    pids = [os.getpid()] if parent is None or parent.pid is None else [parent.pid, os.getpid()]
    processes = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            processes.append(process_identity(pid))
    return WorkerRecord(
        host=machine.host,
        boot=machine.boot,
        processes=processes,
        beat=time.time(),
        shards=sorted(shards),
        choosing=bool(shards),
    )
