"""pack_shard on a hand-made shard: what becomes a sample, what is left out, how parts split."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from mmc4_assets.corpus.status import read_status, write_status
from mmc4_assets.training.files import existing_parts, sizes_path
from mmc4_assets.training.packing import PartLimits, pack_shard
from mmc4_assets.training.samples import sample_key
from mmc4_assets.training.verify import count_training_shards
from mmc4_assets_tests.support.openflamingo_reader import (
    check_sample,
    iter_file_members,
    iter_json_samples,
    split_key,
)

SHARD = 7


def _jpeg(path: Path, side: int, noisy: bool) -> bytes:
    rng = random.Random(side)
    image = Image.new("RGB", (side, side), (200, 30, 30))
    if noisy:
        image.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(side * side)])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=90)
    return path.read_bytes()


def _doc(names: list[str], sentences: int = 3) -> dict:
    return {
        "url": "https://example.org/page",
        "text_list": [f"Sentence number {j}." for j in range(sentences)],
        "image_info": [
            {
                "image_name": n,
                "raw_url": f"https://example.org/{n}",
                "face_detections": None,
                "matched_text_index": 0,
                "matched_sim": 0.25,
            }
            for n in names
        ],
        "similarity_matrix": [[0.25 + 0.01 * j for j in range(sentences)] for _ in names],
    }


@pytest.fixture
def shard_dir(tmp_path) -> Path:
    """Seven documents covering every case; status says which images we hold."""
    data = tmp_path / "data"
    images = data / "images" / str(SHARD)
    files = {
        "big.jpg": _jpeg(images / "big.jpg", 160, noisy=True),
        "tiny.jpg": _jpeg(images / "tiny.jpg", 24, noisy=False),
        "gone.jpg": b"",
        "other.jpg": _jpeg(images / "other.jpg", 150, noisy=True),
        "nan.jpg": _jpeg(images / "nan.jpg", 140, noisy=True),
    }
    nan_doc = json.dumps(_doc(["nan.jpg"])).replace("0.25, ", "NaN, ", 1)
    lines = [
        json.dumps(_doc(["big.jpg", "tiny.jpg"])),  # 0: sample, one image under the floor
        "{not json",  # 1: malformed
        json.dumps(_doc([])),  # 2: no images
        json.dumps(_doc(["a.jpg", "b.jpg"])),  # 3: none held
        json.dumps(_doc(["gone.jpg", "big.jpg"])),  # 4: one file deleted, one held
        nan_doc,  # 5: NaN similarity: the stdlib reads and writes it
        json.dumps(_doc(["renamed.jpg", "other.jpg"])),  # 6: status names another image
    ]
    docs = data / "reassigned_docs" / f"{SHARD}.jsonl"
    docs.parent.mkdir(parents=True)
    docs.write_text("\n".join(lines) + "\n")
    rows = [
        (0, 0, "big.jpg", "ok"), (0, 1, "tiny.jpg", "ok"),
        (3, 0, "a.jpg", "http_error"), (3, 1, "b.jpg", "timeout"),
        (4, 0, "gone.jpg", "ok"), (4, 1, "big.jpg", "ok"),
        (5, 0, "nan.jpg", "ok"),
        (6, 0, "someone-else.jpg", "ok"), (6, 1, "other.jpg", "ok"),
    ]  # fmt: skip
    write_status(
        pd.DataFrame(
            [
                {
                    "shard": SHARD, "doc": doc, "index": index, "image_name": name,
                    "url": f"https://example.org/{name}", "outcome": outcome,
                    "path": f"images/{SHARD}/{name}" if outcome == "ok" else None,
                    "fetched_at": pd.Timestamp("2026-11-01", tz="UTC"), "attempts": 1,
                }
                for doc, index, name, outcome in rows
            ]
        ),
        data,
        SHARD,
    )  # fmt: skip
    assert files["big.jpg"] and len(files["tiny.jpg"]) < 10_000
    return data


def _pack(data: Path, limits: PartLimits | None = None):
    return pack_shard(
        data / "reassigned_docs" / f"{SHARD}.jsonl",
        read_status(data, SHARD),
        data,
        SHARD,
        limits or PartLimits(),
    )


def _digests(data: Path) -> dict[str, str]:
    paths = [*existing_parts(data, SHARD), sizes_path(data, SHARD)]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_samples_embed_held_images_and_leave_out_the_rest(shard_dir):
    result = _pack(shard_dir)
    stats = result.stats
    assert stats.documents == 7
    assert stats.samples == 4
    assert dict(stats.left_out) == {"malformed": 1, "no_images": 1, "no_image_held": 1}
    assert stats.images == 9
    assert stats.images_embedded == 5
    assert stats.images_missing == 1
    assert stats.images_not_matching_status == 1
    assert stats.images_below_loader_floor == 1
    assert [p.name for p in result.parts] == [f"{SHARD}-000.tar"]
    assert json.loads(sizes_path(shard_dir, SHARD).read_text()) == {f"{SHARD}-000.tar": 4}

    tar = shard_dir / "webdataset" / f"{SHARD}-000.tar"
    assert tar.stat().st_size == result.parts[0].bytes
    members = list(iter_file_members([str(tar)]))
    assert [m["fname"] for m in members] == [f"{sample_key(SHARD, d)}.json" for d in (0, 4, 5, 6)]

    source = (shard_dir / "reassigned_docs" / f"{SHARD}.jsonl").read_text().splitlines()
    held = {0: {0, 1}, 4: {1}, 5: {0}, 6: {1}}
    for key, payload in iter_json_samples([str(tar)]):
        shard, line = split_key(key)
        assert shard == SHARD
        checked = check_sample(payload)
        document = checked["document"]
        embedded = {i for i, e in enumerate(document["image_info"]) if "image_base64" in e}
        assert embedded == held[line]
        for i in embedded:
            name = document["image_info"][i]["image_name"]
            stored = (shard_dir / "images" / str(SHARD) / name).read_bytes()
            assert base64.b64decode(document["image_info"][i].pop("image_base64")) == stored
        # Apart from image_base64, the document is the reassigned line unchanged.
        assert json.dumps(document) == json.dumps(json.loads(source[line]))
    assert checked is not None


def test_stand_ins_tiny_images_and_url_duplicates_are_left_out(shard_dir):
    """Images the status table marks placeholder or too_small are never embedded, and counted;
    documents mmc4 marks could_have_url_duplicate are left out when asked (issue 24)."""
    status = read_status(shard_dir, SHARD)
    marked = {(0, 1): "too_small", (4, 1): "placeholder"}  # tiny.jpg; big.jpg in doc 4
    for (doc, index), outcome in marked.items():
        row = (status["doc"] == doc) & (status["index"] == index)
        status.loc[row, ["outcome", "path"]] = [outcome, None]
    write_status(status, shard_dir, SHARD)
    docs = shard_dir / "reassigned_docs" / f"{SHARD}.jsonl"
    lines = docs.read_text().splitlines()
    marked_line = json.loads(lines[5])
    marked_line["could_have_url_duplicate"] = 1
    lines[5] = json.dumps(marked_line)
    docs.write_text("\n".join(lines) + "\n")

    kept = _pack(shard_dir).stats
    assert dict(kept.images_left_out) == {"too_small": 1, "placeholder": 1}
    # Doc 4 had big.jpg (now a stand-in) and a deleted file: nothing of it is held any more.
    assert kept.samples == 3 and kept.images_embedded == 3 and kept.left_out["no_image_held"] == 2
    tar = shard_dir / "webdataset" / f"{SHARD}-000.tar"
    embedded = {
        (split_key(key)[1], entry["image_name"])
        for key, payload in iter_json_samples([str(tar)])
        for entry in check_sample(payload)["document"]["image_info"]
        if "image_base64" in entry
    }
    assert embedded == {(0, "big.jpg"), (5, "nan.jpg"), (6, "other.jpg")}

    skipped = pack_shard(
        docs, read_status(shard_dir, SHARD), shard_dir, SHARD, skip_url_duplicates=True
    ).stats
    assert skipped.left_out["url_duplicate"] == 1 and skipped.samples == 2


def test_nan_similarities_are_written_back_as_the_stdlib_reads_them(shard_dir):
    _pack(shard_dir)
    tar = str(shard_dir / "webdataset" / f"{SHARD}-000.tar")
    payloads = dict(iter_json_samples([tar]))
    assert b"NaN" in payloads[sample_key(SHARD, 5)]


def test_parts_split_by_documents_and_by_bytes(shard_dir):
    by_docs = _pack(shard_dir, PartLimits(documents=3))
    assert [(p.name, p.samples) for p in by_docs.parts] == [
        (f"{SHARD}-000.tar", 3),
        (f"{SHARD}-001.tar", 1),
    ]
    assert count_training_shards(shard_dir, SHARD).problems == []

    # Every sample is larger than this, so each gets a part of its own.
    by_bytes = _pack(shard_dir, PartLimits(bytes=1))
    assert [p.samples for p in by_bytes.parts] == [1, 1, 1, 1]
    for part in by_bytes.parts:
        assert (shard_dir / "webdataset" / part.name).stat().st_size == part.bytes
    limit = 60_000
    capped = _pack(shard_dir, PartLimits(bytes=limit))
    assert all(p.bytes <= limit or p.samples == 1 for p in capped.parts)
    assert sum(p.samples for p in capped.parts) == 4


def test_rebuilding_gives_byte_identical_tars_and_drops_leftover_parts(shard_dir):
    _pack(shard_dir)
    first = _digests(shard_dir)
    many = _pack(shard_dir, PartLimits(documents=1))
    assert len(existing_parts(shard_dir, SHARD)) == 4 and many.removed_parts == []
    again = _pack(shard_dir)
    assert again.removed_parts == [f"{SHARD}-00{n}.tar" for n in (1, 2, 3)]
    assert _digests(shard_dir) == first
    assert not list((shard_dir / "webdataset").glob(".*.part"))


def test_members_carry_fixed_metadata(shard_dir):
    _pack(shard_dir)
    with tarfile.open(shard_dir / "webdataset" / f"{SHARD}-000.tar") as tar:
        for member in tar.getmembers():
            assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (
                0, 0, 0, "", "",
            )  # fmt: skip
            assert member.mode == 0o444 and member.isreg()


def test_a_shard_with_nothing_held_writes_no_tar(shard_dir):
    write_status(
        read_status(shard_dir, SHARD).assign(outcome="timeout", path=None), shard_dir, SHARD
    )
    result = _pack(shard_dir)
    assert result.parts == [] and result.stats.samples == 0
    assert json.loads(sizes_path(shard_dir, SHARD).read_text()) == {}
    assert count_training_shards(shard_dir, SHARD).problems == []


def test_a_missing_status_table_leaves_every_document_out(shard_dir):
    result = pack_shard(shard_dir / "reassigned_docs" / f"{SHARD}.jsonl", None, shard_dir, SHARD)
    assert result.stats.samples == 0 and result.stats.left_out["no_image_held"] == 5


def test_verification_finds_missing_extra_and_miscounted_parts(shard_dir):
    _pack(shard_dir, PartLimits(documents=2))
    counts = count_training_shards(shard_dir, SHARD)
    assert (counts.samples, counts.images_embedded, counts.problems) == (4, 5, [])
    folder = shard_dir / "webdataset"
    (folder / f"{SHARD}-001.tar").unlink()
    (folder / f"{SHARD}-007.tar").write_bytes(b"")
    sizes = json.loads(sizes_path(shard_dir, SHARD).read_text())
    sizes[f"{SHARD}-000.tar"] = 3
    sizes_path(shard_dir, SHARD).write_text(json.dumps(sizes))
    problems = count_training_shards(shard_dir, SHARD).problems
    assert f"{SHARD}-007.tar is on disk but not in the sizes sidecar" in problems
    assert f"{SHARD}-001.tar is in the sizes sidecar but not on disk" in problems
    assert f"{SHARD}-000.tar: 2 samples, the sizes sidecar says 3" in problems


def test_verification_finds_a_truncated_tar(shard_dir):
    _pack(shard_dir)
    tar = shard_dir / "webdataset" / f"{SHARD}-000.tar"
    tar.write_bytes(tar.read_bytes()[:5000])
    problems = count_training_shards(shard_dir, SHARD).problems
    assert any("unreadable tar" in p or "samples, the sizes sidecar says" in p for p in problems)


def test_part_limits_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        PartLimits(documents=0)
