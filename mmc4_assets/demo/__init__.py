"""Offline demo material: a generated sample shard shaped like real mmc4."""
