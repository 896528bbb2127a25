"""The DataStore on a real S3 server (SeaweedFS), and the local store left as it was."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from mmc4_assets.storage import LocalStore, open_store


@pytest.mark.system
def test_urls_and_paths_pick_their_store(tmp_path, s3_env):
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert open_store(f"file://{tmp_path}").root == tmp_path
    assert open_store("s3://somewhere/prefix").remote


@pytest.mark.system
def test_remote_publish_fetch_list_delete(s3_env, bucket):
    store = open_store(f"s3://{bucket}/data/")
    fs = s3_env.filesystem()
    with store.workspace() as work:
        (work / "images" / "7").mkdir(parents=True)
        (work / "images" / "7" / "a.jpg").write_bytes(b"a" * 10)
        (work / "images" / "7" / "b.jpg").write_bytes(b"b" * 20)
        (work / "status").mkdir()
        (work / "status" / "7.parquet").write_bytes(b"table")
        # Nothing is stored before it is published.
        assert fs.find(bucket) == []
        store.publish(work, ["images/7/a.jpg", "images/7/b.jpg"])
        store.publish(work, ["status/7.parquet"])
    assert not work.exists()  # the scratch folder goes with its step
    assert fs.cat(f"{bucket}/data/images/7/b.jpg") == b"b" * 20
    assert store.listing("images/7") == {"images/7/a.jpg": 10, "images/7/b.jpg": 20}
    assert store.listing("images/8") == {}
    assert store.listing("images", prefix="7") == {}  # prefixes are names within the folder
    before = store.stamp("images/7")

    with store.inputs(["status/7.parquet", "status/8.parquet"]) as work:
        assert (work / "status" / "7.parquet").read_bytes() == b"table"
        assert not (work / "status" / "8.parquet").exists()
        got = store.fetch(work, ["images/7/a.jpg", "images/7/b.jpg"], known=True)
        assert got == ["images/7/a.jpg", "images/7/b.jpg"]
        assert (work / "images" / "7" / "a.jpg").read_bytes() == b"a" * 10

    fs.pipe(f"{bucket}/data/images/7/a.jpg", b"A" * 10)  # same size, new content
    replaced = store.stamp("images/7")
    assert replaced != before
    store.delete(["images/7/a.jpg", "images/7/never.jpg"])
    assert store.listing("images/7") == {"images/7/b.jpg": 20}
    assert store.stamp("images/7") not in (before, replaced)
    store.delete(["images/7/b.jpg"])
    assert store.stamp("images/7") is None


@pytest.mark.system
def test_a_failed_step_leaves_no_object(s3_env, bucket):
    store = open_store(f"s3://{bucket}/data")
    with pytest.raises(RuntimeError):
        with store.workspace() as work:
            (work / "raw_docs").mkdir()
            (work / "raw_docs" / "1.jsonl").write_bytes(b"{}\n")
            raise RuntimeError("killed before publishing")
    assert s3_env.filesystem().find(bucket) == []


UPLOADER = """
import os, sys
from pathlib import Path
from mmc4_assets.storage import open_store
store = open_store(sys.argv[1])
work = Path(sys.argv[2])
print("uploading", flush=True)
store.publish(work, ["big.bin"])
print("done", flush=True)
"""


@pytest.mark.system
def test_an_upload_killed_midway_leaves_nothing_or_the_whole_object(s3_env, bucket, tmp_path):
    """A process killed (SIGKILL) while it uploads: the object is absent, or whole, never cut."""
    body = os.urandom(48 * 1024 * 1024)
    (tmp_path / "big.bin").write_bytes(body)
    env = {**os.environ, **s3_env.env}
    child = subprocess.Popen(
        [sys.executable, "-c", UPLOADER, f"s3://{bucket}/data", str(tmp_path)],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert child.stdout.readline().strip() == b"uploading"
    time.sleep(0.3)
    child.send_signal(signal.SIGKILL)
    child.wait()
    fs = s3_env.filesystem()
    key = f"{bucket}/data/big.bin"
    if fs.exists(key):
        assert hashlib.sha256(fs.cat(key)).digest() == hashlib.sha256(body).digest()
    # Whatever happened, a new publish makes it whole.
    open_store(f"s3://{bucket}/data").publish(tmp_path, ["big.bin"])
    assert fs.size(key) == len(body)


def test_the_local_store_is_the_data_folder(tmp_path):
    store = open_store(tmp_path / "data")
    with store.workspace() as work:
        assert work == tmp_path / "data"
        (work / "images" / "3").mkdir(parents=True)
        (work / "images" / "3" / "x.jpg").write_bytes(b"xyz")
        (work / "images" / "3" / ".x.jpg.abc.part").write_bytes(b"partial")
        store.publish(work, ["images/3/x.jpg"])  # nothing to do: the file is in place
    assert (tmp_path / "data" / "images" / "3" / "x.jpg").read_bytes() == b"xyz"
    assert store.listing("images/3") == {"images/3/x.jpg": 3}  # temporaries are not outputs
    assert store.stamp("images/3") == os.stat(tmp_path / "data" / "images" / "3").st_mtime
    assert store.fetch(work, ["images/3/x.jpg", "images/3/y.jpg"]) == ["images/3/x.jpg"]
    store.delete(["images/3/x.jpg"])
    assert store.listing("images/3") == {}
    assert store.stamp("images/4") is None


@pytest.mark.system
def test_a_killed_runs_scratch_is_swept(s3_env, bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("MMC4_SCRATCH_DIR", str(tmp_path))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    leftover = tmp_path / f"mmc4-scratch-{int(dead.stdout)}-abc"
    (leftover / "images" / "1").mkdir(parents=True)
    mine = tmp_path / f"mmc4-scratch-{os.getpid()}-xyz"
    mine.mkdir()
    with open_store(f"s3://{bucket}/data").workspace() as work:
        assert work.parent == tmp_path
        assert not leftover.exists() and mine.exists()
