"""The sample shard looks like real mmc4 and covers the awkward cases the pipeline must handle."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import orjson

from mmc4_assets.corpus.docs import validate_document
from mmc4_devtools.sample_shard import generate_documents, main, write_sample_shard

RAW_URL = re.compile(r"^http://127\.0\.0\.1:8765/img/(\d+)x(\d+)/(\d+)\.(jpg|png)$")


def test_same_seed_same_shard_and_summary(tmp_path: Path):
    first = write_sample_shard(tmp_path / "a.jsonl", documents=50, seed=1)
    write_sample_shard(tmp_path / "b.jsonl", documents=50, seed=1)
    write_sample_shard(tmp_path / "c.jsonl", documents=50, seed=2)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.jsonl").read_bytes() != (tmp_path / "c.jsonl").read_bytes()
    docs = [orjson.loads(line) for line in (tmp_path / "a.jsonl").read_bytes().splitlines()]
    assert first == {"documents": 50, "images": sum(len(d["image_info"]) for d in docs)}


def test_documents_are_shaped_like_mmc4():
    docs = list(generate_documents(1000, seed=42))
    assert all(validate_document(doc) is None for doc in docs)
    assert statistics.median(len(d["image_info"]) for d in docs) == 2
    assert 10 <= statistics.median(len(d["text_list"]) for d in docs) <= 16
    assert any(not d["image_info"] for d in docs)
    assert any(len(d["image_info"]) > len(d["text_list"]) for d in docs)
    assert any(len(set(d["text_list"])) < len(d["text_list"]) for d in docs if d["image_info"])
    images = [image for d in docs for image in d["image_info"]]
    sizes = []
    for image in images:
        assert set(image) == {
            "image_name",
            "raw_url",
            "face_detections",
            "matched_text_index",
            "matched_sim",
        }
        assert re.fullmatch(r"[0-9a-f]{12}\.(jpg|png)", image["image_name"])
        width, height, _, _ = RAW_URL.match(image["raw_url"]).groups()
        sizes.append((int(width), int(height)))
    assert all(64 <= side <= 2000 for size in sizes for side in size)
    large = sum(max(size) > 800 for size in sizes) / len(sizes)
    assert 0.15 < large < 0.25
    assert len({image["image_name"] for image in images}) == len(images)


def test_duplicate_sentences_give_identical_columns():
    for doc in generate_documents(200, seed=9):
        sentences = doc["text_list"]
        for i, sentence in enumerate(sentences):
            j = sentences.index(sentence)
            if j != i:
                assert all(row[i] == row[j] for row in doc["similarity_matrix"])


def test_command_line(tmp_path: Path, capsys):
    main([str(tmp_path / "s.jsonl"), "--documents", "12"])
    assert len((tmp_path / "s.jsonl").read_bytes().splitlines()) == 12
    assert "12 documents" in capsys.readouterr().out
