"""Run health: a run that dies (kill -9, OOM, reboot, lost node) never holds the pipeline.

Dagster marks a run failed when its own process says so, or when the run launcher can check the
worker; neither happens for a CLI run, nor for the DefaultRunLauncher once its code server is
gone, so a dead run stays STARTED forever and keeps its shards and its place in the run queue.

Every step of this project therefore:
- keeps a *worker record* in the instance's key-value store (the runs database: SQLite or
  Postgres): host, boot time, the run worker's and the step's process ids, a heartbeat every
  `heartbeat_seconds`, and the shards it writes with a bakery ticket;
- fails the runs it finds dead before it starts, and logs which and why;
- takes its turn on its shards: a step waits, asleep, for older tickets on the same shards held
  by live runs (Lamport's bakery over the store), so two runs never write one shard at once.

A run is dead when its processes are gone (on this host: checked by pid and start time, at once)
or, for a run on another host, when its heartbeat is older than `dead_after_seconds`. A run of
these assets that never recorded a heartbeat counts as dead `dead_after_seconds` after it
started. The `dead_runs_sensor` applies the same rule from the daemon every 30 seconds, for runs
that nobody waits for but that still count against the run queue's pool limits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence

import dagster as dg
import psutil
from dagster._core.events import JobFailureData, RunFailureReason
from pydantic import Field

# The ops that keep worker records (an op's name is its step key in these asset jobs).
GUARDED_STEPS = (
    "raw_docs",
    "reassigned_docs",
    "download_images",
    "training_shards",
    "corpus_summary",
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
_PID_START_TOLERANCE = 1.0  # seconds: psutil derives start times from boot time and clock ticks
_WAIT_LOG_EVERY = 60.0
_INTERRUPT_GRACE_SECONDS = 3.0  # an interrupted step stops within moments, or is ended


def record_key(run_id: str, step: str) -> str:
    return f"{_KEY_PREFIX}/{run_id}/{step}"


def _step_key(context: dg.AssetExecutionContext) -> str:
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


def _process(pid: int) -> tuple[int, float]:
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
    """Mark a dead run failed (canceled if it was canceling) and free its pool slots."""
    current = instance.get_run_by_id(run.run_id)
    if current is None or current.status not in LIVE_STATUSES:
        return None  # someone else got there first
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


class RunHealth(dg.ConfigurableResource):
    """Heartbeats, dead-run cleanup and per-shard turns for every step (see the module doc)."""

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
        instance, run_id, step = context.instance, context.run.run_id, _step_key(context)
        if step not in GUARDED_STEPS:
            raise ValueError(f"{step} is not in run_health.GUARDED_STEPS")
        heart = _Heartbeat(context, self._first_record(context, shards), self.heartbeat_seconds)
        with heart:
            cleaned = self.reap_dead_runs(instance, by=f"run {run_id[:8]} ({step})")
            for line in cleaned:
                context.log.warning(f"cleaned up dead {line}")
            if shards:
                self._take_turn(context, heart, step, set(shards))
            yield

    def _first_record(self, context: dg.AssetExecutionContext, shards: Sequence[int]):
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
                processes.append(_process(pid))
        return WorkerRecord(
            host=machine.host,
            boot=machine.boot,
            processes=processes,
            beat=time.time(),
            shards=sorted(shards),
            choosing=bool(shards),
        )

    def _take_turn(self, context, heart: _Heartbeat, step: str, shards: set[int]) -> None:
        """Lamport's bakery per shard set: a ticket above every ticket seen, then wait until no
        live run wanting one of these shards is choosing or holds a smaller (ticket, run id)."""
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
                reason = self.death_reason(run)
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
                    f"{self.poll_seconds:g} s)"
                )
            time.sleep(self.poll_seconds)
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


class _Heartbeat:
    """Writes this step's worker record now and every `every` seconds from a daemon thread; stops
    the step if the run was declared dead meanwhile (e.g. after a network partition), so a run
    that others gave up on never writes again."""

    def __init__(self, context: dg.AssetExecutionContext, record: WorkerRecord, every: float):
        self._context = context
        self._instance = context.instance
        self._key = record_key(context.run.run_id, _step_key(context))
        self._record = record
        self._every = every
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mmc4-heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._write()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=self._every + 5)
        try:
            self.update(ticket=None, choosing=False)  # release the shards
        except Exception as error:  # noqa: BLE001 - the run's end releases them anyway
            self._context.log.warning(f"could not release the shards early: {error}")

    def update(self, **changes) -> None:
        with self._lock:
            self._record = dataclasses.replace(self._record, **changes)
        self._write()

    def _write(self) -> None:
        with self._lock:
            self._record.beat = time.time()
            self._instance.run_storage.set_cursor_values({self._key: self._record.to_json()})

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self._write()
                run = self._instance.get_run_by_id(self._context.run.run_id)
            except Exception as error:  # noqa: BLE001 - a lost beat is retried next period
                self._context.log.warning(f"heartbeat not recorded: {error}")
                continue
            if run is not None and run.status not in LIVE_STATUSES:
                self._context.log.error(
                    f"this run was marked {run.status.value} while this step was still working "
                    "(declared dead or terminated); stopping so two runs never write one shard"
                )
                os.kill(os.getpid(), signal.SIGINT)  # Dagster stops the step as interrupted
                if not self._stop.wait(_INTERRUPT_GRACE_SECONDS):
                    # Work that does not heed the interrupt (it may run in an event loop that
                    # swallows it) must still stop: end this process. Files stay whole.
                    self._context.log.error("the step did not stop; ending its process")
                    os.kill(os.getpid(), signal.SIGKILL)
                return


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Fails runs whose worker is gone (killed, out of memory, lost host), so their "
    "shards and their place in the run queue are released and run retries can take over.",
)
def dead_runs_sensor(context: dg.SensorEvaluationContext, run_health: RunHealth):
    cleaned = run_health.reap_dead_runs(context.instance, by="dead_runs_sensor")
    for line in cleaned:
        context.log.warning(f"failed dead {line}")
    if cleaned:
        return dg.SkipReason(f"failed {len(cleaned)} dead run(s): " + "; ".join(cleaned))
    return dg.SkipReason("no dead runs")
