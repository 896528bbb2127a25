"""Training shards: the shard's documents and stored images packed as WebDataset tars in the
format OpenFlamingo's mmc4 loader reads. Pure logic, no Dagster."""
