"""The reassignment reproduces the reference rule exactly and never crashes on odd documents."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import orjson
import pytest
from lapjv import lapjv

from mmc4_assets.corpus.assignment import (
    assign_images,
    check_assignments,
    reassign_document,
    reassign_shard,
)
from mmc4_devtools.sample_shard import generate_documents


def rule_from_design(similarity: list[list[float]]) -> list[int]:
    """The reassignment rule of docs/contracts.md, written out plainly: lapjv on -sim padded with
    1000, argmax leftovers."""
    sim = np.array(similarity)
    n_images, n_sentences = sim.shape
    cost = -sim
    if n_images > n_sentences:
        cost = np.pad(cost, [[0, 0], [0, n_images - n_sentences]], constant_values=1000)
    elif n_sentences > n_images:
        cost = np.pad(cost, [[0, n_sentences - n_images], [0, 0]], constant_values=1000)
    row_to_column = lapjv(cost)[0]
    assigned = {i: int(row_to_column[i]) for i in range(n_images) if row_to_column[i] < n_sentences}
    return [assigned.get(i, int(np.argmax(sim[i]))) for i in range(n_images)]


def assign(similarity: list[list[float]]) -> list[int]:
    return assign_images(np.array(similarity)).tolist()


@pytest.mark.parametrize(
    ("similarity", "expected"),
    [
        ([[0.9, 0.1], [0.8, 0.7]], [0, 1]),  # square: 0.9 + 0.7 beats 0.1 + 0.8
        ([[0.5, 0.4, 0.1], [0.6, 0.2, 0.1]], [1, 0]),  # more sentences: 0.4 + 0.6 beats 0.5 + 0.2
        ([[0.3, 0.25], [0.9, 0.1], [0.8, 0.2]], [1, 0, 0]),  # more images: image 2 takes argmax
        ([[0.1, 0.3, 0.2]], [1]),  # single image
        ([[0.2], [0.7], [0.5]], [0, 0, 0]),  # single sentence
        ([[0.3]], [0]),
        ([[1, 0], [0, 1]], [0, 1]),  # integer similarities, as np.array would keep them
    ],
)
def test_hand_checked_cases(similarity, expected):
    assert assign(similarity) == expected
    assert rule_from_design(similarity) == expected


def test_ties_from_duplicate_sentences_follow_lapjv():
    one_image = [[0.5, 0.5, 0.1]]
    assert assign(one_image) == rule_from_design(one_image)
    assert assign(one_image)[0] in (0, 1)
    two_images = [[0.5, 0.5], [0.4, 0.4]]
    assert assign(two_images) == rule_from_design(two_images)
    assert sorted(assign(two_images)) == [0, 1]


def random_similarity(rng: random.Random) -> list[list[float]]:
    n_images, n_sentences = rng.randint(1, 8), rng.randint(1, 20)
    digits = rng.choice([2, 3, None])  # few digits -> many exact ties
    rows = [
        [
            round(v, digits) if digits else v
            for v in (rng.uniform(0.0, 0.4) for _ in range(n_sentences))
        ]
        for _ in range(n_images)
    ]
    if n_sentences > 1 and rng.random() < 0.4:  # duplicate sentences: identical columns
        source, target = rng.sample(range(n_sentences), 2)
        for row in rows:
            row[target] = row[source]
    if n_images > 1 and rng.random() < 0.3:  # the same picture twice: identical rows
        rows[1] = list(rows[0])
    return rows


def test_matches_the_rule_on_random_documents():
    rng = random.Random(7)
    matrices = [random_similarity(rng) for _ in range(400)]
    matrices += [
        doc["similarity_matrix"] for doc in generate_documents(200, seed=3) if doc["image_info"]
    ]
    assert any(len(m) > len(m[0]) for m in matrices)
    for similarity in matrices:
        assert assign(similarity) == rule_from_design(similarity), similarity


def test_reassign_document_sets_index_and_sim():
    doc = {
        "text_list": ["a", "b"],
        "image_info": [{"image_name": "x.jpg", "matched_text_index": 0, "matched_sim": 0.0}],
        "similarity_matrix": [[0.1, 0.30000001192092896]],
        "url": "u",
    }
    assert reassign_document(doc) == (None, 1)
    assert doc["image_info"][0] == {
        "image_name": "x.jpg",
        "matched_text_index": 1,
        "matched_sim": 0.30000001192092896,
    }
    assert reassign_document(doc) == (None, 0)


def good_doc(index: int) -> dict:
    return {
        "image_info": [
            {"image_name": f"{index}a.jpg", "raw_url": "http://x/a", "matched_text_index": 0},
            {"image_name": f"{index}b.jpg", "raw_url": "http://x/b", "matched_text_index": 0},
        ],
        "similarity_matrix": [[0.9, 0.1, 0.2], [0.8, 0.7, 0.1]],
        "url": f"https://example.com/{index}",
        "text_list": ["one", "two", "thrée"],
        "extra": {"nested": [1, 2.5, None]},
    }


ODD_LINES = {
    "no_images": b'{"image_info": [], "similarity_matrix": [], "text_list": ["a"]}',
    "no_sentences": b'{"image_info": [{"image_name": "a"}], "similarity_matrix": [[]], '
    b'"text_list": []}',
    "nan_similarity": b'{"image_info": [{"image_name": "a"}], "similarity_matrix": [[NaN, 0.2]], '
    b'"text_list": ["a", "b"]}',
    "bad_shape": b'{"image_info": [{"image_name": "a"}], "similarity_matrix": [[0.1]], '
    b'"text_list": ["a", "b"]}',
    "bad_line": b"this is not json",
}


def test_reassign_shard_leaves_odd_documents_unchanged_and_counts_them(tmp_path: Path):
    src, dest = tmp_path / "raw.jsonl", tmp_path / "out" / "reassigned.jsonl"
    lines = [orjson.dumps(good_doc(0))]
    for odd in ODD_LINES.values():
        lines += [odd, orjson.dumps(good_doc(len(lines)))]
    lines.append(b'["an", "array"]')
    src.write_bytes(b"\r\n".join(lines))  # CRLF and no final newline, to be normalised

    stats = reassign_shard(src, dest)

    assert stats.documents == len(lines)
    assert stats.unchanged == {**dict.fromkeys(ODD_LINES, 1), "bad_line": 2}
    assert stats.images == 2 * 6 and stats.changed == 6  # each good doc: image 0 stays, 1 moves
    written = dest.read_bytes().split(b"\n")
    assert written[-1] == b"" and len(written) == len(lines) + 1
    for original, out in zip(lines, written, strict=False):
        if original in ODD_LINES.values() or original == lines[-1]:
            assert out == original  # left unchanged: byte for byte
            continue
        expected = orjson.loads(original)
        reassign_document(expected)
        assert orjson.loads(out) == expected  # every other field and the order preserved
        assert [im["matched_text_index"] for im in expected["image_info"]] == [0, 1]
    assert [p.name for p in dest.parent.iterdir()] == ["reassigned.jsonl"]


def test_reassign_shard_matches_the_rule_on_a_sample_shard(tmp_path: Path):
    src, dest = tmp_path / "raw.jsonl", tmp_path / "reassigned.jsonl"
    docs = list(generate_documents(300, seed=11))
    src.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
    stats = reassign_shard(src, dest)
    out = [orjson.loads(line) for line in dest.read_bytes().splitlines()]
    assert stats.documents == 300 and stats.unchanged["no_images"] == 3
    for before, after in zip(docs, out, strict=True):
        if before["image_info"]:
            expected = rule_from_design(before["similarity_matrix"])
            assert [im["matched_text_index"] for im in after["image_info"]] == expected
            sims = [before["similarity_matrix"][i][j] for i, j in enumerate(expected)]
            assert [im["matched_sim"] for im in after["image_info"]] == sims
        for key in ("text_list", "url", "similarity_matrix", "could_have_url_duplicate"):
            assert after[key] == before[key]
    assert check_assignments(dest) == []


def test_check_assignments_finds_planted_problems(tmp_path: Path):
    src, dest = tmp_path / "raw.jsonl", tmp_path / "reassigned.jsonl"
    src.write_bytes(
        b"\n".join(orjson.dumps(good_doc(i)) for i in range(3)) + b"\n" + ODD_LINES["bad_line"]
    )
    reassign_shard(src, dest)
    assert check_assignments(dest) == []

    docs = dest.read_bytes().splitlines()
    shared = orjson.loads(docs[0])
    shared["image_info"][1]["matched_text_index"] = shared["image_info"][0]["matched_text_index"]
    out_of_range = orjson.loads(docs[2])
    out_of_range["image_info"][0]["matched_text_index"] = 3
    docs[0], docs[2] = orjson.dumps(shared), orjson.dumps(out_of_range)
    dest.write_bytes(b"\n".join(docs) + b"\n")

    problems = check_assignments(dest)
    assert len(problems) == 2
    assert problems[0].startswith("line 1:") and "share sentence" in problems[0]
    assert problems[1].startswith("line 3:") and "not in [0, 3)" in problems[1]
