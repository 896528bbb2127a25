"""The shard numbering of mmc4: 0..23098 minus the fourteen shards that were never published."""

FIRST_SHARD = 0
LAST_SHARD = 23098
MISSING_SHARDS = frozenset(
    {3218, 3267, 5064, 5146, 7119, 8991, 9750, 11899, 15127, 15252, 16996, 17369, 17499, 17818}
)
ALL_SHARDS: tuple[int, ...] = tuple(
    s for s in range(FIRST_SHARD, LAST_SHARD + 1) if s not in MISSING_SHARDS
)


class UnknownShardError(ValueError):
    """Raised for a shard number that is not part of the corpus."""


def parse_shard(key: str | int) -> int:
    """Turn a partition key into a shard number, refusing shards that do not exist."""
    text = str(key).strip()
    if not text.isdecimal() or (len(text) > 1 and text.startswith("0")):
        raise UnknownShardError(
            f"shard {key!r} does not exist: shard keys are plain decimal numbers "
            f"{FIRST_SHARD}..{LAST_SHARD}"
        )
    shard = int(text)
    if shard > LAST_SHARD:
        raise UnknownShardError(
            f"shard {shard} does not exist: mmc4 shards run from {FIRST_SHARD} to {LAST_SHARD}"
        )
    if shard in MISSING_SHARDS:
        raise UnknownShardError(
            f"shard {shard} does not exist: it is one of the {len(MISSING_SHARDS)} shards "
            "that were never published"
        )
    return shard
