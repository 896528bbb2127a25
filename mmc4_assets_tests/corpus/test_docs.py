"""fetch_shard writes raw_docs atomically, keeps bad lines in place and counts them."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import orjson
import pytest

from mmc4_assets.corpus.docs import ShardFetchError, fetch_shard, validate_document
from mmc4_assets_tests.corpus.test_source import broken_sources, serve_folder, write_shard_file
from mmc4_devtools.sample_shard import generate_documents


def doc_lines(n: int, seed: int = 5) -> list[bytes]:
    return [orjson.dumps(doc) + b"\n" for doc in generate_documents(n, seed=seed)]


@pytest.mark.parametrize("compression", ["", "gz", "zip"])
def test_fetch_from_a_folder_writes_the_lines_as_fetched(tmp_path: Path, compression):
    lines = doc_lines(40)
    name = f"docs_no_face_shard_42_v2.jsonl{'.' + compression if compression else ''}"
    source = write_shard_file(tmp_path / "src" / name, lines, compression)
    dest = tmp_path / "data" / "raw_docs" / "42.jsonl"

    stats = fetch_shard(str(tmp_path / "src"), 42, dest)

    assert dest.read_bytes() == b"".join(lines)
    docs = [orjson.loads(line) for line in lines]
    assert (stats.shard, stats.source, stats.documents) == (42, str(source), 40)
    assert stats.images == sum(len(d["image_info"]) for d in docs)
    assert stats.sentences == sum(len(d["text_list"]) for d in docs)
    assert stats.bytes == dest.stat().st_size
    assert stats.source_sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert (stats.bad_lines, stats.bad_line_examples) == (0, [])


def test_templates_with_plain_path_and_file_url(tmp_path: Path):
    lines = doc_lines(5)
    write_shard_file(tmp_path / "docs_shard_42_v3.jsonl.gz", lines, "gz")
    for template in (
        f"{tmp_path}/docs_shard_{{shard}}_v3.jsonl.gz",
        f"file://{tmp_path}/docs_shard_{{shard}}_v3.jsonl.gz",
    ):
        dest = tmp_path / "out" / "42.jsonl"
        assert fetch_shard(template, 42, dest).documents == 5
        assert dest.read_bytes() == b"".join(lines)


def test_line_endings_are_normalised_and_a_final_newline_added(tmp_path: Path):
    lines = [line.rstrip(b"\n") for line in doc_lines(3)]
    write_shard_file(tmp_path / "42.jsonl", [lines[0] + b"\r\n", lines[1] + b"\n", lines[2]])
    dest = tmp_path / "out.jsonl"
    fetch_shard(str(tmp_path), 42, dest)
    assert dest.read_bytes() == b"\n".join(lines) + b"\n"


def test_bad_lines_are_kept_in_place_and_counted(tmp_path: Path):
    good = doc_lines(4)
    bad_shape = orjson.loads(good[0])
    bad_shape["similarity_matrix"] = bad_shape["similarity_matrix"] + [
        [0.1] * len(bad_shape["text_list"])
    ]
    lines = [
        good[0],
        b"not json at all\n",
        good[1],
        orjson.dumps(bad_shape) + b"\n",
        b"[1, 2]\n",
        good[2],
        b"\n",
        good[3],
    ]
    write_shard_file(tmp_path / "42.jsonl.zip", lines, "zip")
    dest = tmp_path / "out.jsonl"

    stats = fetch_shard(str(tmp_path), 42, dest)

    assert dest.read_bytes() == b"".join(lines)
    assert stats.documents == 8 and stats.bad_lines == 4
    n_images, n_sentences = len(bad_shape["image_info"]), len(bad_shape["text_list"])
    assert stats.bad_line_examples[0].startswith("line 2: not JSON (")
    assert stats.bad_line_examples[1:] == [
        f"line 4: similarity_matrix is {n_images + 1}x{n_sentences} "
        f"but image_info x text_list is {n_images}x{n_sentences}",
        "line 5: not a JSON object but list",
        "line 7: empty line",
    ]


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"text_list": ["a"], "image_info": [], "similarity_matrix": []}, None),
        (
            {"text_list": "a", "image_info": [], "similarity_matrix": []},
            "text_list is not a list of strings",
        ),
        ({"text_list": [], "image_info": {}, "similarity_matrix": []}, "image_info is not a list"),
        (
            {"text_list": [], "image_info": [{"image_name": "a.jpg"}], "similarity_matrix": [[]]},
            "image_info[0] has no text raw_url",
        ),
        (
            {
                "text_list": ["a", "b"],
                "image_info": [{"image_name": "a.jpg", "raw_url": "u"}],
                "similarity_matrix": [[0.1, "0.2"]],
            },
            "similarity_matrix holds a value that is not a number",
        ),
        (
            {
                "text_list": ["a", "b"],
                "image_info": [{"image_name": "a.jpg", "raw_url": "u"}],
                "similarity_matrix": [[0.1], [0.2, 0.3]],
            },
            "similarity_matrix is 2xragged but image_info x text_list is 1x2",
        ),
    ],
)
def test_validate_document(doc, reason):
    assert validate_document(doc) == reason


def test_broken_sources_leave_nothing_and_keep_a_previous_good_file(tmp_path: Path):
    for label, path in broken_sources(tmp_path / "broken").items():
        dest = tmp_path / label.replace(" ", "_") / "42.jsonl"
        with pytest.raises(ShardFetchError) as caught:
            fetch_shard(str(path), 42, dest)
        assert "shard 42" in str(caught.value) and str(path) in str(caught.value), label
        assert not dest.parent.exists() or list(dest.parent.iterdir()) == [], label

        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"previous good file\n")
        with pytest.raises(ShardFetchError):
            fetch_shard(str(path), 42, dest)
        assert dest.read_bytes() == b"previous good file\n", label
        assert list(dest.parent.iterdir()) == [dest], label


def test_empty_decompressed_shard_is_an_error(tmp_path: Path):
    write_shard_file(tmp_path / "42.jsonl.zip", [], "zip")
    dest = tmp_path / "out" / "42.jsonl"
    with pytest.raises(ShardFetchError, match="shard 42 .*holds no documents"):
        fetch_shard(str(tmp_path), 42, dest)
    assert list(dest.parent.iterdir()) == []


def test_multi_member_zip_leaves_no_output(tmp_path: Path):
    with zipfile.ZipFile(tmp_path / "42.jsonl.zip", "w") as archive:
        archive.writestr("a.jsonl", b"{}\n")
        archive.writestr("b.jsonl", b"{}\n")
    dest = tmp_path / "out" / "42.jsonl"
    with pytest.raises(ShardFetchError, match="shard 42 .*exactly one file"):
        fetch_shard(str(tmp_path), 42, dest)
    assert not dest.exists()


def test_fetch_over_real_http(tmp_path: Path):
    lines = doc_lines(10)
    source = write_shard_file(tmp_path / "docs_no_face_shard_42_v2.jsonl.zip", lines, "zip")
    dest = tmp_path / "out" / "42.jsonl"
    with serve_folder(tmp_path) as base:
        stats = fetch_shard(f"{base}/docs_no_face_shard_{{shard}}_v2.jsonl.zip", 42, dest)
        assert dest.read_bytes() == b"".join(lines)
        assert stats.source_sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
        with pytest.raises(ShardFetchError, match="shard 43 .*not found"):
            fetch_shard(
                f"{base}/docs_no_face_shard_{{shard}}_v2.jsonl.zip", 43, tmp_path / "43.jsonl"
            )
    assert not (tmp_path / "43.jsonl").exists()
