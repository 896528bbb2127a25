"""The backfill schedule evaluated against a real instance."""

from __future__ import annotations

import dagster as dg

from mmc4_assets.resources import BackfillSettings
from mmc4_assets.schedules import new_shards_schedule
from mmc4_assets_tests.support.materialize import materialize_shard


def evaluate(instance, shards_per_tick: int) -> list[dg.RunRequest]:
    resources = {"backfill": BackfillSettings(shards_per_tick=shards_per_tick)}
    with dg.build_schedule_context(instance=instance, resources=resources) as context:
        result = new_shards_schedule(context)
    return [] if isinstance(result, dg.SkipReason) else list(result)


def test_each_tick_launches_at_most_the_batch_of_never_run_shards(instance, pipeline_env):
    requests = evaluate(instance, 3)
    assert [r.partition_key for r in requests] == ["0", "1", "2"]
    assert all(r.tags["mmc4/stage"] == "download" for r in requests)
    assert len(evaluate(instance, 1)) == 1

    # shard 42 succeeded and shard 0 failed (no source): neither is launched again
    assert materialize_shard(instance, "raw_docs downloaded_images status_report").success
    failed = materialize_shard(
        instance, "raw_docs downloaded_images status_report", "0", raise_on_error=False
    )
    assert not failed.success
    requests = evaluate(instance, 50)
    keys = [r.partition_key for r in requests]
    assert len(keys) == 50
    assert "0" not in keys and "42" not in keys
    assert keys[:2] == ["1", "2"] and keys[-1] == "51"
