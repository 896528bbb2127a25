"""corpus_summary aggregates every shard's report metadata."""

from __future__ import annotations

from mmc4_assets.resources import StalenessPolicy
from mmc4_assets_tests.support.materialize import latest_metadata, materialize_shard
from mmc4_assets_tests.support.shards import write_image_shard

PIPELINE = "raw_docs downloaded_images status_report"


def test_summary_totals_all_shards(instance, pipeline_env, shard_folder, image_web):
    write_image_shard(
        shard_folder, 43, [image_web.url(0, "/img/200x100/1.jpg"), image_web.url(0, "/fault/500/x")]
    )
    photo = image_web.url(1, "/img/90x90/2.png")
    write_image_shard(shard_folder, 44, [photo, photo])  # the same image twice: one copy
    fast_retries = StalenessPolicy(retry_cooldown_hours=0)
    for shard in ("43", "44"):
        assert materialize_shard(instance, PIPELINE, shard, staleness=fast_retries).success
    result = materialize_shard(instance, "corpus_summary", partition=None, staleness=fast_retries)
    assert result.success
    meta = latest_metadata(instance, "corpus_summary", partition=None)
    assert meta["shards"] == 2
    assert meta["images"] == 4
    assert meta["ok"] == 3
    assert meta["outcome_http_error"] == 1
    assert meta["retryable_failures"] == 1
    assert meta["stale_shards"] == 1
    assert meta["success_percent"] == 75.0
    assert (meta["exact_duplicates"], meta["near_duplicates"]) == (1, 0)
    assert "| 0 | 1 | 0 |" in meta["standins_and_duplicates_by_site"]  # the site: its host
