import pytest

from mmc4_assets.corpus.shards import MISSING_SHARDS, UnknownShardError, parse_shard
from mmc4_assets.partitions import shard_partitions


def test_partitions_are_the_published_shards():
    keys = shard_partitions.get_partition_keys()
    assert len(keys) == 23_085
    assert keys[0] == "0" and keys[-1] == "23098"
    assert not {str(s) for s in MISSING_SHARDS} & set(keys)
    assert "42" in keys and "3217" in keys and "3218" not in keys


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("3218", "never published"),
        ("23099", "0 to 23098"),
        ("-1", "plain decimal"),
        ("042", "plain decimal"),
        ("abc", "plain decimal"),
    ],
)
def test_unknown_shards_say_they_do_not_exist(key, why):
    with pytest.raises(UnknownShardError, match=why) as error:
        parse_shard(key)
    assert "does not exist" in str(error.value)


def test_known_shard_parses():
    assert parse_shard("0") == 0
    assert parse_shard("23098") == 23098
