"""Failing a dead run: its status, its shards and its place in the run queue, its pool slots."""

from __future__ import annotations

import dagster as dg

# Dagster has no public type for a run failure's reason (its own run monitoring passes this
# one). UNEXPECTED_TERMINATION is what the UI and run retries should see for a lost worker;
# this is the project's only private Dagster import.
from dagster._core.events import JobFailureData, RunFailureReason

from mmc4_assets.run_health.records import LIVE_STATUSES, LiveRun


def _held_slots(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """Pool slots (op granularity) and queued slot claims the run holds, for the log."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    held = []
    for key in storage.get_concurrency_keys():
        info = storage.get_concurrency_info(key)
        held += [key for slot in info.claimed_slots if slot.run_id == run_id]
        held += [f"{key} (waiting)" for step in info.pending_steps if step.run_id == run_id]
    return held


def fail_dead_run(instance: dg.DagsterInstance, run: LiveRun, reason: str, by: str) -> str | None:
    """Mark a dead run failed (canceled if it was canceling) and free its pool slots; one line
    for the log, or None when someone else got there first."""
    current = instance.get_run_by_id(run.run_id)
    if current is None or current.status not in LIVE_STATUSES:
        return None
    slots = _held_slots(instance, run.run_id)
    message = (
        f"Run worker gone: {reason}. Marked by {by}, so that its shards and its place in the "
        "run queue are released"
        + (f", and its pool slots freed: {', '.join(slots)}" if slots else "")
        + "."
    )
    if current.status == dg.DagsterRunStatus.CANCELING:
        instance.report_run_canceled(current, message)
    else:
        instance.report_run_failed(
            current,
            message,
            JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION),
        )
    if instance.event_log_storage.supports_global_concurrency_limits:
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    return f"{run.describe()}: {reason}" + (f"; freed {', '.join(slots)}" if slots else "")
