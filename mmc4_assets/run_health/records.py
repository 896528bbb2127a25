"""Worker records: what each step of each run says about itself, in the instance's key-value store.

One JSON value per (run, step) under `record_key`, in the runs database the instance already has
(SQLite or Postgres), so every machine of a deployment reads the same records without a new store.
"""

from __future__ import annotations

import dataclasses
import json

import dagster as dg

# The ops that keep worker records (an op's name is its step key in these asset jobs).
GUARDED_STEPS = (
    "raw_docs",
    "reassigned_docs",
    "download_images",
    "training_shards",
    "corpus_summary",
    "placeholder_index",
)
GUARDED_ASSETS = {
    dg.AssetKey(name)
    for name in (
        "raw_docs",
        "reassigned_docs",
        "downloaded_images",
        "status_report",
        "training_shards",
    )
}
# Runs whose steps may still be executing somewhere.
LIVE_STATUSES = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
_KEY_PREFIX = "mmc4/run_health"


def record_key(run_id: str, step: str) -> str:
    return f"{_KEY_PREFIX}/{run_id}/{step}"


def step_key(context: dg.AssetExecutionContext) -> str:
    return context.op_execution_context.op_handle.name


@dataclasses.dataclass
class WorkerRecord:
    """What one step of one run says about itself (stored as JSON under record_key)."""

    host: str
    boot: float
    processes: list[tuple[int, float]]  # (pid, start time): the run worker and the step
    beat: float  # time.time() of the last heartbeat
    shards: list[int] = dataclasses.field(default_factory=list)
    ticket: int | None = None  # bakery ticket while the step wants or holds its shards
    choosing: bool = False  # taking a ticket right now

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerRecord | None:
        try:
            data = json.loads(text)
            data["processes"] = [tuple(p) for p in data["processes"]]
            return cls(**data)
        except (ValueError, TypeError, KeyError):
            return None

    def describe(self) -> str:
        pids = ", ".join(str(pid) for pid, _ in self.processes)
        return f"host {self.host}, pid {pids}"


@dataclasses.dataclass(frozen=True)
class LiveRun:
    """An in-progress run and the worker records of its steps."""

    record: dg.RunRecord
    steps: dict[str, WorkerRecord]

    @property
    def run_id(self) -> str:
        return self.record.dagster_run.run_id

    def describe(self) -> str:
        tags = self.record.dagster_run.tags
        first = tags.get("dagster/asset_partition_range_start")
        last = tags.get("dagster/asset_partition_range_end")
        shards = tags.get("dagster/partition") or (first if first == last else f"{first}-{last}")
        return f"run {self.run_id[:8]} (shard {shards or '?'})"


def live_runs(instance: dg.DagsterInstance, exclude: str | None = None) -> list[LiveRun]:
    """Every run in a live status, with its steps' worker records: two queries."""
    records = [
        r
        for r in instance.get_run_records(filters=dg.RunsFilter(statuses=LIVE_STATUSES))
        if r.dagster_run.run_id != exclude
    ]
    keys = {record_key(r.dagster_run.run_id, step) for r in records for step in GUARDED_STEPS}
    stored = instance.run_storage.get_cursor_values(keys) if keys else {}
    runs = []
    for record in records:
        steps = {}
        for step in GUARDED_STEPS:
            text = stored.get(record_key(record.dagster_run.run_id, step))
            worker = WorkerRecord.from_json(text) if text else None
            if worker is not None:
                steps[step] = worker
        runs.append(LiveRun(record, steps))
    return runs
