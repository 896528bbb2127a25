"""The sensors: stale images re-downloaded, dead runs failed.

The stale-image sensor finds shards with stale images and re-downloads only those.

Each tick examines the next chunk of materialized shards (a cursor walks all of them across ticks)
using only the status_report metadata and one stat() per shard folder (one listing on an object
store), and requests at most
`max_runs_per_tick` runs. A run key made of the shard and its report's storage id means one report
version never triggers two runs.
"""

import bisect
import functools
import json
import time
from collections.abc import Callable

import dagster as dg

from mmc4_assets.assets.images import DOWNLOAD_RUN_TAGS, STATUS_REPORT, download_images
from mmc4_assets.resources import CorpusStorage, StalenessPolicy
from mmc4_assets.run_health import RunHealth
from mmc4_assets.shard_metadata import fetch_records, latest_storage_ids, shard_due_at
from mmc4_assets.storage import layout

DECODE_BATCH = 200
STALE_RUN_CONFIG = {"ops": {"download_images": {"config": {"only_stale": True}}}}


def stale_reason(
    metadata: dict, images_stamp: Callable[[], float | None], now: float, policy: StalenessPolicy
) -> str | None:
    """Why a shard needs a stale run now, from its report metadata and, only when that does not
    decide, the images folder's stamp now (DataStore.stamp: mtime on a disk, a listing digest on
    an object store, where it costs a request)."""
    due_at = shard_due_at(metadata, policy)
    if due_at is not None and due_at <= now:
        return "due"
    if int(metadata.get("ok", 0)) == 0:
        return None
    # Reports written before the stamp had another name recorded the folder's mtime.
    recorded = float(metadata.get("images_stamp", metadata.get("images_dir_mtime", -1.0)))
    if images_stamp() != recorded:
        return "files_changed"
    return None


@dg.sensor(
    target=download_images,
    minimum_interval_seconds=600,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Re-downloads stale images: retryable failures past the cool-down, copies older "
    "than the maximum age (revalidated), and files that went missing.",
)
def stale_images_sensor(
    context: dg.SensorEvaluationContext, storage: CorpusStorage, staleness: StalenessPolicy
) -> dg.SensorResult | dg.SkipReason:
    latest = latest_storage_ids(context.instance, STATUS_REPORT)
    store = storage.store()
    if not latest:
        return dg.SkipReason("no shard has a status report yet")
    shards = sorted(int(key) for key in latest)
    # The cursor is the last shard examined, so shards materialized meanwhile shift nothing.
    last = json.loads(context.cursor)["last_shard"] if context.cursor else -1
    start = bisect.bisect_right(shards, last)
    if start == len(shards):
        start = 0  # a lap is complete: start over
    chunk = shards[start : start + staleness.shards_per_tick]
    now = time.time()
    requests: list[dg.RunRequest] = []
    examined: list[int] = []
    # Decoding event metadata is what a tick costs, so decode in small batches and stop at the cap.
    for batch_start in range(0, len(chunk), DECODE_BATCH):
        if len(requests) >= staleness.max_runs_per_tick:
            break
        batch = chunk[batch_start : batch_start + DECODE_BATCH]
        ids = [latest[str(shard)] for shard in batch]
        records = {r.partition: r for r in fetch_records(context.instance, STATUS_REPORT, ids)}
        for shard in batch:
            if len(requests) >= staleness.max_runs_per_tick:
                break
            examined.append(shard)
            record = records.get(str(shard))
            if record is None:
                continue
            stamp = functools.partial(store.stamp, layout.images_folder(shard))
            reason = stale_reason(record.metadata, stamp, now, staleness)
            if reason:
                requests.append(
                    dg.RunRequest(
                        run_key=f"stale:{shard}:{record.storage_id}",
                        partition_key=str(shard),
                        run_config=STALE_RUN_CONFIG,
                        tags={**DOWNLOAD_RUN_TAGS, "mmc4/stale_reason": reason},
                    )
                )
    context.log.info(
        f"examined shards {examined[0]}..{examined[-1]} ({len(examined)} of {len(shards)}), "
        f"{len(requests)} stale"
    )
    return dg.SensorResult(run_requests=requests, cursor=json.dumps({"last_shard": examined[-1]}))


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Fails runs whose worker is gone (killed, out of memory, lost host), so their "
    "shards and their place in the run queue are released and run retries can take over.",
)
def dead_runs_sensor(context: dg.SensorEvaluationContext, run_health: RunHealth):
    """The run_health rule from the daemon, for dead runs no step of another run comes across."""
    cleaned = run_health.reap_dead_runs(context.instance, by="dead_runs_sensor")
    for line in cleaned:
        context.log.warning(f"failed dead {line}")
    if cleaned:
        return dg.SkipReason(f"failed {len(cleaned)} dead run(s): " + "; ".join(cleaned))
    return dg.SkipReason("no dead runs")
