"""Turn-taking on shards: Lamport's bakery over the worker records, so two runs never write one
shard at once. The store is the instance's key-value table, which has no locks across machines;
the bakery needs none, only that every run reads the others' tickets."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import dagster as dg

from mmc4_assets.run_health.heartbeat import Heartbeat
from mmc4_assets.run_health.reaper import fail_dead_run
from mmc4_assets.run_health.records import LiveRun, live_runs

_WAIT_LOG_EVERY = 60.0


def take_turn(
    context: dg.AssetExecutionContext,
    heart: Heartbeat,
    step: str,
    shards: set[int],
    *,
    death_reason: Callable[[LiveRun], str | None],
    poll_seconds: float,
) -> None:
    """Take a ticket above every ticket seen, then wait until no live run wanting one of these
    shards is choosing or holds a smaller (ticket, run id); runs found dead meanwhile are failed."""
    run_id = context.run.run_id
    others = live_runs(context.instance, exclude=run_id)
    tickets = [r.steps[step].ticket or 0 for r in others if step in r.steps]
    ticket = 1 + max(tickets, default=0)
    heart.update(ticket=ticket, choosing=False)
    mine = (ticket, run_id)
    logged_at, waited_since = 0.0, time.monotonic()
    while True:
        blockers = []
        for run in others:
            worker = run.steps.get(step)
            if worker is None or not shards & set(worker.shards):
                continue
            if not (worker.choosing or (worker.ticket and (worker.ticket, run.run_id) < mine)):
                continue
            reason = death_reason(run)
            if reason is None:
                blockers.append(run)
                continue
            line = fail_dead_run(context.instance, run, reason, f"run {run_id[:8]} ({step})")
            if line:  # (None: another run failed it first)
                context.log.warning(f"cleaned up dead {line}")
        if not blockers:
            break
        holders = [run for run in blockers if not run.steps[step].choosing]
        # (Runs still choosing a ticket are done within moments: not worth a line.)
        if holders and time.monotonic() - logged_at >= _WAIT_LOG_EVERY:
            logged_at = time.monotonic()
            context.log.info(
                f"{step}: waiting for shard(s) {_shard_list(shards)}, held by "
                + "; ".join(_holder(run, step) for run in holders)
                + f" (waiting {logged_at - waited_since:.0f} s, checking every "
                f"{poll_seconds:g} s)"
            )
        time.sleep(poll_seconds)
        others = live_runs(context.instance, exclude=run_id)
    if logged_at:
        context.log.info(
            f"{step}: shard(s) {_shard_list(shards)} free after "
            f"{time.monotonic() - waited_since:.0f} s; going on"
        )


def _shard_list(shards: Iterable[int]) -> str:
    return ", ".join(str(s) for s in sorted(shards))


def _holder(run: LiveRun, step: str) -> str:
    worker = run.steps[step]
    return (
        f"{run.describe()} on {worker.describe()}, "
        f"last heartbeat {time.time() - worker.beat:.0f} s ago"
    )
