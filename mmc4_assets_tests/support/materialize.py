"""Materialize the project's own assets in process, against a given instance."""

from __future__ import annotations

import dagster as dg

from mmc4_assets.definitions import ASSET_CHECKS, ASSETS, RESOURCES


def materialize_shard(
    instance: dg.DagsterInstance,
    selection: str,
    partition: str = "42",
    *,
    run_config: dict | None = None,
    raise_on_error: bool = True,
    tags: dict | None = None,
    **resources,
) -> dg.ExecuteInProcessResult:
    """Run `selection` (e.g. "raw_docs reassigned_docs") for one shard, with the asset checks.

    Resources are the project's own, with any given by keyword (e.g. `staleness=...`) replacing
    them.
    """
    return dg.materialize(
        [*ASSETS, *ASSET_CHECKS],
        selection=[dg.AssetKey(name) for name in selection.split()],
        partition_key=partition,
        instance=instance,
        resources={**RESOURCES, **resources},
        run_config=run_config,
        raise_on_error=raise_on_error,
        tags=tags,
    )


def latest_metadata(instance: dg.DagsterInstance, asset: str, partition: str | None = "42") -> dict:
    """Plain metadata values of an asset (partition)'s latest materialization."""
    partitions = [partition] if partition is not None else None
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=partitions),
        limit=1,
    ).records
    assert records, f"{asset} partition {partition} was never materialized"
    metadata = records[0].asset_materialization.metadata
    return {key: getattr(value, "value", value) for key, value in metadata.items()}
