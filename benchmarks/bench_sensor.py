"""One tick of `stale_images_sensor` over every shard: 23,085 materialized status_report partitions.

Builds a temporary SQLite instance (the storage a default DAGSTER_HOME uses) holding one
status_report materialization per shard partition, with the metadata the real asset writes
(images.py). Every shard gets an images/{shard} folder whose mtime is recorded, as after a real
download. A few shards are stale: `--stale` of them (default 1%) have a retryable failure long
past the cool-down, `--changed` of them (default 0.2%) have a folder that changed since the report.

Then it times, against the project's own sensor function and resources:

- one tick with the default StalenessPolicy (2,000 shards examined, at most 20 run requests);
- a full lap: ticks from cursor 0 until the cursor has walked all shards once;
- one tick with shards_per_tick=23,085 (default run cap, and with the cap lifted).

Writing 23,085 events one by one through `instance.report_runless_asset_event` costs one SQLite
commit per shard and database (about 50 ms each here, ~20 min in all). So only the first
`--slow-events` go that way (their rate is reported), and the rest are written by `bulk_store`,
which does exactly what `SqliteEventLogStorage.store_event` does for an asset materialization, in
one transaction per database.

    .venv/bin/python benchmarks/bench_sensor.py [--repeat 5] [--profile] [--keep]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData  # noqa: E402
from dagster._core.events.log import EventLogEntry  # noqa: E402
from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID  # noqa: E402

from mmc4_assets.assets.images import STATUS_REPORT  # noqa: E402
from mmc4_assets.corpus.status import OUTCOMES  # noqa: E402
from mmc4_assets.partitions import shard_partitions  # noqa: E402
from mmc4_assets.resources import CorpusStorage, StalenessPolicy  # noqa: E402
from mmc4_assets.sensors import stale_images_sensor  # noqa: E402
from mmc4_assets.shard_metadata import fetch_records, latest_storage_ids  # noqa: E402
from mmc4_assets.storage import layout  # noqa: E402

DAY = 86_400.0


# --------------------------------------------------------------------------- the fake corpus


def shard_metadata(
    key: str, data_dir: Path, kind: str, now: float, rng: random.Random
) -> dict[str, object]:
    """Metadata shaped like download_images writes on status_report (see assets/images.py)."""
    images = rng.randint(14_000, 18_000)
    counts = {outcome: 0 for outcome in OUTCOMES}
    retryable = 0
    if kind == "due" or rng.random() < 0.3:
        retryable = rng.randint(1, 200)
        counts["timeout"] = retryable
    failures = rng.randint(images // 5, images // 3)
    counts["http_error"] = failures // 2
    counts["connection_error"] = 0
    counts["not_image"] = failures - counts["http_error"]
    counts["ok"] = images - sum(counts.values())
    if kind == "due":
        earliest_retryable_at = now - rng.uniform(3, 30) * DAY  # long past the 24 h cool-down
    elif retryable:
        earliest_retryable_at = now - rng.uniform(0.01, 0.9) * DAY  # still cooling down
    else:
        earliest_retryable_at = -1.0
    folder = data_dir / "images" / key
    mtime = os.stat(folder).st_mtime
    if kind == "changed":
        mtime -= 3600.0  # files moved under the folder since the report was written
    hosts = [(f"host{n}.example.org", rng.randint(1, 500)) for n in range(5)]
    return {
        "images": images,
        "ok": counts["ok"],
        "success_percent": dg.MetadataValue.float(round(100 * counts["ok"] / images, 1)),
        "bytes": counts["ok"] * rng.randint(20_000, 60_000),
        **{f"outcome_{o}": counts[o] for o in OUTCOMES},
        "retryable_failures": retryable,
        "outcomes": dg.MetadataValue.md(
            "| outcome | images |\n|---|---|\n"
            + "\n".join(f"| {o} | {counts[o]} |" for o in OUTCOMES)
        ),
        "top_failing_hosts": dg.MetadataValue.md(
            "| host | failures |\n|---|---|\n" + "\n".join(f"| {h} | {n} |" for h, n in hosts)
        ),
        "earliest_retryable_at": dg.MetadataValue.float(earliest_retryable_at),
        "oldest_ok_at": dg.MetadataValue.float(now - rng.uniform(1, 90) * DAY),
        "images_stamp": dg.MetadataValue.float(mtime),
        "parquet": dg.MetadataValue.path(str(data_dir / "status" / f"{key}.parquet")),
        "tsv": dg.MetadataValue.path(str(data_dir / "status" / f"{key}.tsv.gz")),
    }


def runless_entry(materialization: dg.AssetMaterialization) -> EventLogEntry:
    """The event log entry `report_runless_asset_event` builds for a materialization."""
    event = DagsterEvent(
        event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
        job_name=RUNLESS_JOB_NAME,
        event_specific_data=StepMaterializationData(materialization),
    )
    return EventLogEntry(
        user_message="",
        level=20,
        job_name=RUNLESS_JOB_NAME,
        run_id=RUNLESS_RUN_ID,
        error_info=None,
        timestamp=time.time(),
        step_key=None,
        dagster_event=event,
    )


def bulk_store(instance: dg.DagsterInstance, entries: Sequence[EventLogEntry]) -> None:
    """SqliteEventLogStorage.store_event for asset materializations, one transaction per DB."""
    storage = instance.event_log_storage
    inserts = [storage.prepare_insert_event(entry) for entry in entries]
    with storage.run_connection(RUNLESS_RUN_ID) as conn:
        for insert in inserts:
            conn.execute(insert)
    with storage.index_transaction() as conn:
        for entry, insert in zip(entries, inserts, strict=True):
            event_id = conn.execute(insert).inserted_primary_key[0]
            storage._store_asset_event_tags(conn, [entry], [event_id])
            storage._store_asset_event(conn, entry, event_id)


def populate(
    instance: dg.DagsterInstance,
    data_dir: Path,
    keys: Sequence[str],
    kinds: dict[str, str],
    slow_events: int,
) -> dict[str, float]:
    now = time.time()
    rng = random.Random(1234)
    started = time.perf_counter()
    for key in keys:
        (data_dir / "images" / key).mkdir(parents=True)
    folders = time.perf_counter() - started

    materializations = [
        dg.AssetMaterialization(
            asset_key=STATUS_REPORT,
            partition=key,
            metadata=shard_metadata(key, data_dir, kinds.get(key, "fresh"), now, rng),
        )
        for key in keys
    ]
    started = time.perf_counter()
    for materialization in materializations[:slow_events]:
        instance.report_runless_asset_event(materialization)
    slow = time.perf_counter() - started
    started = time.perf_counter()
    rest = materializations[slow_events:]
    for start in range(0, len(rest), 5000):
        bulk_store(instance, [runless_entry(m) for m in rest[start : start + 5000]])
    bulk = time.perf_counter() - started
    return {
        "folders_s": folders,
        "slow_events": min(slow_events, len(keys)),
        "slow_s": slow,
        "slow_ms_per_event": 1000 * slow / max(1, min(slow_events, len(keys))),
        "bulk_events": len(rest),
        "bulk_s": bulk,
    }


def verify(instance: dg.DagsterInstance, keys: Sequence[str]) -> None:
    """The sensor's own readers see every shard, with plain metadata, in both write paths."""
    latest = latest_storage_ids(instance, STATUS_REPORT)
    assert set(latest) == set(keys), f"{len(latest)} partitions stored, {len(keys)} expected"
    sample = [keys[0], keys[len(keys) // 2], keys[-1]]
    records = list(fetch_records(instance, STATUS_REPORT, (latest[k] for k in sample)))
    assert sorted(r.partition for r in records) == sorted(sample), records
    for record in records:
        assert isinstance(record.metadata["images_stamp"], float), record.metadata
        assert record.metadata["ok"] > 0


# --------------------------------------------------------------------------- the ticks


def tick(
    instance: dg.DagsterInstance, data_dir: Path, policy: StalenessPolicy, cursor: str | None
) -> tuple[float, dg.SensorResult | dg.SkipReason, str | None]:
    with dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"storage": CorpusStorage(data_dir=str(data_dir)), "staleness": policy},
    ) as context:
        started = time.perf_counter()
        result = stale_images_sensor(context)
        elapsed = time.perf_counter() - started
    next_cursor = result.cursor if isinstance(result, dg.SensorResult) else cursor
    return elapsed, result, next_cursor


def runs(result: dg.SensorResult | dg.SkipReason) -> int:
    return len(result.run_requests or []) if isinstance(result, dg.SensorResult) else 0


def last_shard(cursor: str | None) -> int:
    return json.loads(cursor)["last_shard"] if cursor else -1


def repeated(fn: Callable[[], tuple[float, int, int]], repeat: int) -> dict[str, float]:
    samples = [fn() for _ in range(repeat)]
    seconds = [s for s, _, _ in samples]
    return {
        "min_s": min(seconds),
        "median_s": statistics.median(seconds),
        "runs": samples[-1][1],
        "ticks": samples[-1][2],
    }


def full_lap(
    instance: dg.DagsterInstance, data_dir: Path, policy: StalenessPolicy, total: int
) -> tuple[float, int, int]:
    """Ticks from a fresh cursor until the cursor has reached the last shard."""
    cursor, ticks, requested, seconds = None, 0, 0, 0.0
    final = int(shard_partitions.get_partition_keys()[-1])
    while True:
        elapsed, result, cursor = tick(instance, data_dir, policy, cursor)
        seconds += elapsed
        ticks += 1
        requested += runs(result)
        if last_shard(cursor) == final:
            return seconds, requested, ticks
        if ticks > total:
            raise RuntimeError("the cursor does not advance")


def parts(instance: dg.DagsterInstance, data_dir: Path, chunk: int) -> dict[str, float]:
    """Where a tick's time goes: the per-partition query, the event fetch, the folder stats."""
    started = time.perf_counter()
    latest = latest_storage_ids(instance, STATUS_REPORT)
    t_latest = time.perf_counter() - started
    keys = sorted(latest, key=int)[:chunk]
    started = time.perf_counter()
    records = list(fetch_records(instance, STATUS_REPORT, (latest[k] for k in keys)))
    t_fetch = time.perf_counter() - started
    started = time.perf_counter()
    for record in records:
        os.stat(data_dir / layout.images_folder(int(record.partition)))
    t_stat = time.perf_counter() - started
    return {"latest_storage_ids_s": t_latest, "fetch_records_s": t_fetch, "stat_s": t_stat}


def measure(instance, data_dir: Path, keys: list[str], repeat: int) -> None:
    """Time ticks and full laps at the default and at whole-corpus settings; print the table."""
    default = StalenessPolicy()
    whole = StalenessPolicy(shards_per_tick=len(keys))
    uncapped = StalenessPolicy(shards_per_tick=len(keys), max_runs_per_tick=len(keys))
    tick(instance, data_dir, default, None)  # warm caches and imports once

    def one(policy: StalenessPolicy) -> Callable[[], tuple[float, int, int]]:
        def run() -> tuple[float, int, int]:
            elapsed, result, _ = tick(instance, data_dir, policy, None)
            return elapsed, runs(result), 1

        return run

    rows = [
        (
            "1 tick, default (2000/tick, cap 20)",
            default,
            repeated(one(default), repeat),
        ),
        (
            "full lap, default",
            default,
            repeated(
                lambda: full_lap(instance, data_dir, default, len(keys)),
                max(1, repeat // 2),
            ),
        ),
        (
            f"1 tick, shards_per_tick={len(keys)}, cap 20",
            whole,
            repeated(one(whole), repeat),
        ),
        (
            f"1 tick, shards_per_tick={len(keys)}, no cap",
            uncapped,
            repeated(one(uncapped), repeat),
        ),
    ]
    breakdown = parts(instance, data_dir, default.shards_per_tick)
    breakdown_all = parts(instance, data_dir, len(keys))

    print()
    print(f"{'case':<44} {'shards':>7} {'ticks':>6} {'min s':>8} {'median s':>9} {'runs':>5}")
    for name, _, row in rows:
        print(
            f"{name:<44} {len(keys):>7} {row['ticks']:>6} {row['min_s']:>8.3f} "
            f"{row['median_s']:>9.3f} {row['runs']:>5}"
        )
    print()
    for label, values in (
        ("2000 shards", breakdown),
        (f"{len(keys)} shards", breakdown_all),
    ):
        print(
            f"parts, {label}: latest_storage_ids {values['latest_storage_ids_s']:.3f}s, "
            f"fetch_records {values['fetch_records_s']:.3f}s, "
            f"stat {values['stat_s']:.3f}s"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of each timing")
    parser.add_argument("--stale", type=float, default=0.01, help="share of shards past due")
    parser.add_argument("--changed", type=float, default=0.002, help="share with moved files")
    parser.add_argument("--slow-events", type=int, default=200, help="written one by one")
    parser.add_argument("--dir", type=Path, default=None, help="where the scratch folder goes")
    parser.add_argument("--profile", action="store_true", help="cProfile one full-corpus tick")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)

    keys = list(shard_partitions.get_partition_keys())
    rng = random.Random(42)
    picked = rng.sample(keys, int(len(keys) * (args.stale + args.changed)))
    n_due = int(len(keys) * args.stale)
    kinds = {key: "due" for key in picked[:n_due]} | {key: "changed" for key in picked[n_due:]}

    scratch = Path(tempfile.mkdtemp(prefix="bench-sensor-", dir=args.dir))
    try:
        data_dir = scratch / "data"
        (scratch / "home").mkdir()
        with dg.instance_for_test(temp_dir=str(scratch / "home")) as instance:
            setup = populate(instance, data_dir, keys, kinds, args.slow_events)
            verify(instance, keys)
            print(
                f"setup: {len(keys)} shards, {n_due} due + {len(kinds) - n_due} changed; "
                f"{setup['folders_s']:.1f}s for the image folders; "
                f"{setup['slow_events']} events via report_runless_asset_event in "
                f"{setup['slow_s']:.1f}s ({setup['slow_ms_per_event']:.1f} ms/event, "
                f"~{setup['slow_ms_per_event'] * len(keys) / 1000 / 60:.0f} min for all); "
                f"{setup['bulk_events']} via bulk_store in {setup['bulk_s']:.1f}s"
            )

            measure(instance, data_dir, keys, args.repeat)
            print(f"(stale shards planted: {n_due} due, {len(kinds) - n_due} changed)")

            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                tick(
                    instance,
                    data_dir,
                    StalenessPolicy(shards_per_tick=len(keys), max_runs_per_tick=len(keys)),
                    None,
                )
                profiler.disable()
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
                print(out.getvalue())
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
