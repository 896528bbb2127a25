"""The shard partitions: one partition per published mmc4 shard, keyed "0" .. "23098"."""

import dagster as dg

from mmc4_assets.corpus.shards import ALL_SHARDS, UnknownShardError, parse_shard


class ShardPartitionsDefinition(dg.StaticPartitionsDefinition):
    """Static shard partitions; an unknown key fails saying why that shard does not exist."""

    def __init__(self):
        super().__init__([str(shard) for shard in ALL_SHARDS])

    def validate_partition_key(self, partition_key: str, context) -> None:
        try:
            parse_shard(partition_key)
        except UnknownShardError as error:
            raise dg.DagsterInvalidSubsetError(str(error)) from None
        super().validate_partition_key(partition_key, context)


shard_partitions = ShardPartitionsDefinition()
