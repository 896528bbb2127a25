"""corpus_summary: the whole corpus at a glance, aggregated from every shard's report metadata."""

import time
from collections import Counter

import dagster as dg

from mmc4_assets.assets.common import outcome_table, percent
from mmc4_assets.assets.images import STATUS_REPORT
from mmc4_assets.corpus.status import OUTCOMES
from mmc4_assets.downloader.storing.duplicates import KINDS
from mmc4_assets.resources import StalenessPolicy
from mmc4_assets.run_health import RunHealth
from mmc4_assets.shard_metadata import fetch_records, latest_storage_ids, shard_due_at


@dg.asset(
    deps=[STATUS_REPORT],
    group_name="images",
    kinds={"python"},
    description="Totals over all materialized shards: images per outcome, success rate, bytes, "
    "stand-ins and duplicates per site, and how many shards are due for a stale-image run. "
    "Built from metadata, not files.",
)
def corpus_summary(
    context: dg.AssetExecutionContext, staleness: StalenessPolicy, run_health: RunHealth
) -> dg.MaterializeResult:
    with run_health.guard(context):  # a heartbeat only: it writes no shard
        latest = latest_storage_ids(context.instance, STATUS_REPORT)
        totals = dict.fromkeys(OUTCOMES, 0)
        images = nbytes = retryable = stale_shards = 0
        sites: dict[str, Counter] = {}
        now = time.time()
        for record in fetch_records(context.instance, STATUS_REPORT, latest.values()):
            meta = record.metadata
            images += int(meta.get("images", 0))
            nbytes += int(meta.get("bytes", 0))
            retryable += int(meta.get("retryable_failures", 0))
            for outcome in OUTCOMES:
                totals[outcome] += int(meta.get(f"outcome_{outcome}", 0))
            for row in _json(meta.get("standins_and_duplicates_by_site")):
                site = sites.setdefault(str(row.get("site")), Counter())
                site.update({kind: int(row.get(kind, 0)) for kind in KINDS})
            due_at = shard_due_at(meta, staleness)
            if due_at is not None and due_at <= now:
                stale_shards += 1
    context.log.info(f"{len(latest)} shards, {images} images, {totals['ok']} ok")
    return dg.MaterializeResult(
        metadata={
            "shards": len(latest),
            "images": images,
            "ok": totals["ok"],
            "success_percent": percent(totals["ok"] / images if images else 0.0),
            "bytes": nbytes,
            "retryable_failures": retryable,
            "stale_shards": stale_shards,
            "outcomes": dg.MetadataValue.md(outcome_table(totals)),
            **{f"outcome_{outcome}": count for outcome, count in totals.items()},
            **{kind: sum(site[kind] for site in sites.values()) for kind in KINDS[1:]},
            "standins_and_duplicates_by_site": dg.MetadataValue.md(_sites_table(sites)),
        }
    )


# Counted per site by each shard's status_report (storing/duplicates.py's by_site), among its
# 20 sites with the most: a site below that in a shard is not counted there.


def _json(value) -> list:
    data = getattr(value, "data", value)
    return data if isinstance(data, list) else []


def _sites_table(sites: dict[str, Counter], top: int = 20) -> str:
    busiest = sorted(sites.items(), key=lambda item: (-sum(item[1].values()), item[0]))[:top]
    rows = [f"| {site} | " + " | ".join(str(c[k]) for k in KINDS) + " |" for site, c in busiest]
    head = "| site | stand-ins | exact duplicates | near duplicates |\n|---|---|---|---|\n"
    return head + ("\n".join(rows) or "| none | 0 | 0 | 0 |")
