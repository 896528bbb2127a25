"""A real S3-compatible server (SeaweedFS) for the object-storage tests; each test gets a bucket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mmc4_assets_tests.support.servers.seaweedfs import SeaweedS3


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedS3]:
    """One `weed mini` for the whole session."""
    with SeaweedS3() as server:
        yield server


@pytest.fixture
def s3_env(seaweed, monkeypatch) -> SeaweedS3:
    """The standard AWS variables pointing at the server, as a user would export them."""
    for key, value in seaweed.env.items():
        monkeypatch.setenv(key, value)
    return seaweed


@pytest.fixture
def bucket(s3_env) -> str:
    """A new, empty bucket of this test's own."""
    return s3_env.new_bucket()


@pytest.fixture
def s3_data_dir(bucket, monkeypatch, tmp_path) -> str:
    """MMC4_DATA_DIR on the bucket (under a prefix), scratch folders under tmp_path/scratch."""
    url = f"s3://{bucket}/corpus"
    monkeypatch.setenv("MMC4_DATA_DIR", url)
    (tmp_path / "scratch").mkdir()
    monkeypatch.setenv("MMC4_SCRATCH_DIR", str(tmp_path / "scratch"))
    return url
