"""The heartbeat: a step's worker record kept fresh from a daemon thread while the step works."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import dagster as dg

from mmc4_assets.run_health.records import LIVE_STATUSES, WorkerRecord, record_key, step_key

_INTERRUPT_GRACE_SECONDS = 3.0  # an interrupted step stops within moments, or is ended


class Heartbeat:
    """Writes this step's worker record now and every `every` seconds from a daemon thread; stops
    the step if the run was declared dead meanwhile (e.g. after a network partition), so a run
    that others gave up on never writes again."""

    def __init__(self, context: dg.AssetExecutionContext, record: WorkerRecord, every: float):
        self._context = context
        self._instance = context.instance
        self._key = record_key(context.run.run_id, step_key(context))
        self._record = record
        self._every = every
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mmc4-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
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
