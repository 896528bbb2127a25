"""Scheduling: the shard run that hands images to the fetcher, the decoders and the store."""
