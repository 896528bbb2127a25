"""Shared fixtures: a real Dagster instance, a loopback image host, and a sample shard source."""

from __future__ import annotations

import gc
import zipfile
from pathlib import Path

import dagster as dg
import pytest

from mmc4_assets.demo.sample_shard import write_sample_shard
from mmc4_assets.devtools.loopback_web import LoopbackWeb

SHARD = 42


@pytest.fixture(autouse=True)
def collect_garbage_after_each_test():
    """Collect garbage after every test, so a Dagster context left open fails its own test's
    neighbours at once instead of some later test, whenever the collector happens to run."""
    yield
    gc.collect()


@pytest.fixture
def instance():
    """A real SQLite-backed instance in a temporary DAGSTER_HOME."""
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def image_web():
    with LoopbackWeb(hosts=2, latency_ms=2.0, stall_seconds=5.0) as web:
        yield web


def zip_shard(plain: Path) -> Path:
    zipped = plain.with_name(plain.name + ".zip")
    with zipfile.ZipFile(zipped, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(plain, arcname=plain.name)
    plain.unlink()
    return zipped


@pytest.fixture
def shard_folder(tmp_path, image_web) -> Path:
    """A folder holding shard 42 as the corpus ships it (zipped), its images on the loopback web."""
    folder = tmp_path / "source"
    folder.mkdir()
    write_sample_shard(
        folder / f"docs_no_face_shard_{SHARD}_v2.jsonl",
        documents=40,
        seed=7,
        image_base_url=image_web.base_urls[0],
    )
    zip_shard(folder / f"docs_no_face_shard_{SHARD}_v2.jsonl")
    return folder


@pytest.fixture
def pipeline_env(monkeypatch, tmp_path, shard_folder) -> Path:
    """The variables a user sets: data folder, shard source, loopback allowed. Gives data dir."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("MMC4_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MMC4_DOCS_URL", str(shard_folder))
    monkeypatch.setenv("MMC4_ALLOW_PRIVATE_NETWORKS", "1")
    return data_dir


def write_image_shard(folder: Path, shard: int, urls: list[str]) -> None:
    """A shard with one two-sentence document per image URL (for tests that pick each URL)."""
    import orjson

    lines = []
    for number, url in enumerate(urls):
        lines.append(
            orjson.dumps(
                {
                    "url": f"https://example.org/page/{number}",
                    "text_list": ["A first sentence.", "A second sentence."],
                    "image_info": [
                        {
                            "image_name": f"img{number:04d}.jpg",
                            "raw_url": url,
                            "face_detections": None,
                            "matched_text_index": 0,
                            "matched_sim": 0.3,
                        }
                    ],
                    "similarity_matrix": [[0.3, 0.2]],
                }
            )
        )
    (folder / f"{shard}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
