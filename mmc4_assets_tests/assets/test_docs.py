"""raw_docs and reassigned_docs materialized in process against a real instance."""

from __future__ import annotations

import orjson

from mmc4_assets_tests.support.materialize import latest_metadata, materialize_shard


def check_results(result):
    return {
        evaluation.check_name: evaluation.passed
        for evaluation in result.get_asset_check_evaluations()
    }


def test_docs_stages_write_files_metadata_and_pass_their_check(instance, pipeline_env):
    result = materialize_shard(instance, "raw_docs reassigned_docs")
    assert result.success
    raw = pipeline_env / "raw_docs" / "42.jsonl"
    reassigned = pipeline_env / "reassigned_docs" / "42.jsonl"
    documents = [orjson.loads(line) for line in raw.read_bytes().splitlines()]
    assert len(documents) == 40

    meta = latest_metadata(instance, "raw_docs")
    assert meta["documents"] == 40
    assert meta["images"] == sum(len(d["image_info"]) for d in documents)
    assert meta["sentences"] == sum(len(d["text_list"]) for d in documents)
    assert meta["bad_lines"] == 0
    assert meta["bytes"] == raw.stat().st_size
    assert len(meta["source_sha256"]) == 64
    assert meta["source"].endswith("docs_no_face_shard_42_v2.jsonl.zip")

    meta = latest_metadata(instance, "reassigned_docs")
    assert meta["documents"] == 40
    assert meta["images"] == sum(len(d["image_info"]) for d in documents)
    assert "assignments_changed" in meta and "documents_unchanged" in meta
    assert check_results(result) == {"assignments_are_valid": True}

    out = [orjson.loads(line) for line in reassigned.read_bytes().splitlines()]
    assert [d["url"] for d in out] == [d["url"] for d in documents]
    for before, after in zip(documents, out, strict=True):
        assert before["text_list"] == after["text_list"]
        assert before["similarity_matrix"] == after["similarity_matrix"]
        for image in after["image_info"]:
            row = after["similarity_matrix"][after["image_info"].index(image)]
            assert image["matched_sim"] == row[image["matched_text_index"]]


def test_unset_docs_url_fails_with_how_to_set_it(instance, pipeline_env, monkeypatch):
    monkeypatch.delenv("MMC4_DOCS_URL")
    result = materialize_shard(instance, "raw_docs", raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error.to_string()
    assert "MMC4_DOCS_URL" in failure
    assert not (pipeline_env / "raw_docs" / "42.jsonl").exists()


def test_missing_shard_fails_naming_shard_and_source(instance, pipeline_env):
    result = materialize_shard(instance, "raw_docs", partition="43", raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error.to_string()
    assert "43" in failure
    assert not (pipeline_env / "raw_docs" / "43.jsonl").exists()


def test_bad_lines_are_kept_and_counted(instance, pipeline_env, shard_folder, tmp_path):
    good = (shard_folder / "docs_no_face_shard_42_v2.jsonl.zip").rename(tmp_path / "good.zip")
    import zipfile

    with zipfile.ZipFile(good) as archive:
        lines = archive.read(archive.namelist()[0]).splitlines()
    lines.insert(3, b'{"text_list": ["a"], "image_info": [], "similarity_matrix": [[1.0]]}')
    lines.insert(5, b"{not json")
    (shard_folder / "42.jsonl").write_bytes(b"\n".join(lines) + b"\n")

    result = materialize_shard(instance, "raw_docs reassigned_docs")
    assert result.success
    meta = latest_metadata(instance, "raw_docs")
    assert meta["bad_lines"] == 2
    assert "line 6: not JSON" in meta["bad_line_examples"]
    assert meta["documents"] == 42
    written = (pipeline_env / "raw_docs" / "42.jsonl").read_bytes().splitlines()
    assert written[5] == b"{not json"
    reassigned = (pipeline_env / "reassigned_docs" / "42.jsonl").read_bytes().splitlines()
    assert len(reassigned) == 42 and reassigned[5] == b"{not json"
    assert latest_metadata(instance, "reassigned_docs")["documents_unchanged"] >= 2


def test_batched_run_records_metadata_per_shard(instance, pipeline_env, shard_folder):
    """A backfill batch runs several shards in one run; each keeps its own metadata."""
    zipped = shard_folder / "docs_no_face_shard_42_v2.jsonl.zip"
    (shard_folder / "docs_shard_43_v3.jsonl.zip").write_bytes(zipped.read_bytes())
    (shard_folder / "44.jsonl").write_bytes(b"\n".join([b"{bad"] * 3) + b"\n")
    result = materialize_shard(
        instance,
        "raw_docs reassigned_docs",
        partition=None,
        tags={
            "dagster/asset_partition_range_start": "42",
            "dagster/asset_partition_range_end": "44",
        },
    )
    assert result.success
    assert latest_metadata(instance, "raw_docs", "42")["source"].endswith("_42_v2.jsonl.zip")
    assert latest_metadata(instance, "raw_docs", "43")["source"].endswith("_43_v3.jsonl.zip")
    assert latest_metadata(instance, "raw_docs", "44")["bad_lines"] == 3
    assert latest_metadata(instance, "reassigned_docs", "43")["documents"] == 40
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["shards_checked"].value == 3
