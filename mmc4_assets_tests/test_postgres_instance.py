"""The shipped Postgres instance (deploy/postgres/dagster.yaml) against a real PostgreSQL server:
every asset, the sensor and the schedule, as the SQLite tests run them, plus what only Postgres
shows (the driver, the rows in its tables)."""

from __future__ import annotations

from collections import Counter

import dagster as dg
import pytest
import yaml

from mmc4_assets.corpus.status import read_status
from mmc4_assets.resources import StalenessPolicy
from mmc4_assets_tests.support.instance_files import ROOT_DAGSTER_YAML, instance_settings
from mmc4_assets_tests.support.materialize import latest_metadata, materialize_shard
from mmc4_assets_tests.support.servers.postgres import POSTGRES_DAGSTER_YAML
from mmc4_assets_tests.support.shards import write_image_shard
from mmc4_assets_tests.test_schedules import evaluate
from mmc4_assets_tests.test_sensors import PIPELINE, ImageHost, run_request, tick

pytestmark = pytest.mark.system

EVERY_SHARD_ASSET = "raw_docs reassigned_docs downloaded_images status_report"


@pytest.fixture
def host():
    image_host = ImageHost()
    yield image_host
    image_host.server.shutdown()


def table_counts(postgres_home, *tables: str) -> dict[str, int]:
    with postgres_home.params.connect() as connection, connection.cursor() as cursor:
        counts = {}
        for table in tables:
            cursor.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 - our own table names
            counts[table] = cursor.fetchone()[0]
    connection.close()
    return counts


def test_the_two_instance_files_differ_only_in_where_history_is_kept():
    """One set of queue and concurrency limits, whichever instance a user picks."""
    local = yaml.safe_load(ROOT_DAGSTER_YAML.read_text())
    postgres = yaml.safe_load(POSTGRES_DAGSTER_YAML.read_text())
    assert set(local["storage"]) == {"sqlite"}  # and its files, under .dagster/
    assert set(postgres["storage"]) == {"postgres"}
    assert {key: value for key, value in postgres.items() if key != "storage"} == (
        instance_settings()
    )


def test_the_instance_is_postgres_through_psycopg2_with_the_shipped_limits(
    postgres_instance, postgres_home
):
    for storage in (
        postgres_instance.run_storage,
        postgres_instance.event_log_storage,
        postgres_instance.schedule_storage,
    ):
        assert type(storage).__module__.startswith("dagster_postgres"), type(storage)
        url = storage.postgres_url
        assert url.startswith("postgresql+psycopg2://"), "psycopg 3 is SQLAlchemy 2.1's default"
        assert f":{postgres_home.params.port}/{postgres_home.params.db}" in url
    queue = postgres_instance.get_concurrency_config().run_queue_config
    assert queue.max_concurrent_runs == 4
    assert queue.tag_concurrency_limits == [{"key": "mmc4/stage", "value": "download", "limit": 1}]
    assert postgres_instance.get_concurrency_config().pool_config.default_pool_limit == 1


def test_every_asset_materializes_for_a_shard(postgres_instance, postgres_home, pipeline_env):
    result = materialize_shard(postgres_instance, EVERY_SHARD_ASSET)
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert {check.check_name for check in checks} == {
        "assignments_are_valid",
        "every_image_has_one_status",
    }
    assert all(check.passed for check in checks)
    summary = materialize_shard(postgres_instance, "corpus_summary", partition=None)
    assert summary.success

    report = latest_metadata(postgres_instance, "status_report")
    table = read_status(pipeline_env, 42)
    assert report["images"] == len(table) > 0
    assert latest_metadata(postgres_instance, "corpus_summary", partition=None)["images"] == len(
        table
    )
    # The history is in PostgreSQL's own tables, where every machine of a deployment sees it.
    counts = table_counts(postgres_home, "runs", "event_logs", "asset_keys")
    assert counts["runs"] == 2
    assert counts["asset_keys"] >= 5
    with postgres_home.params.connect() as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
            " AND partition = '42'"
        )
        assert cursor.fetchone()[0] == 4
        # The site ledger lives in the instance's database too, shared by every machine's runs;
        # the run gave its leases back when it ended.
        cursor.execute("SELECT count(*) FROM mmc4_site_leases")
        assert cursor.fetchone()[0] == 0
    connection.close()
    assert latest_metadata(postgres_instance, "downloaded_images")["ledger_transactions"] > 0


def test_the_sensor_requests_and_reruns_a_stale_image(
    postgres_instance, pipeline_env, shard_folder, host
):
    host.modes["/b.jpg"] = "500"
    write_image_shard(shard_folder, 43, host.urls("a", "b"))
    assert materialize_shard(postgres_instance, PIPELINE, "43").success
    no_cooldown = StalenessPolicy(retry_cooldown_hours=0)

    assert tick(postgres_instance, StalenessPolicy()).run_requests == []  # still cooling down
    first = tick(postgres_instance, no_cooldown)
    (request,) = first.run_requests
    assert request.partition_key == "43"

    host.modes.clear()
    host.requests.clear()
    assert run_request(postgres_instance, request, no_cooldown).success
    assert host.requests == Counter({"/b.jpg": 1})
    assert list(read_status(pipeline_env, 43)["outcome"]) == ["ok", "ok"]
    assert tick(postgres_instance, no_cooldown, first.cursor).run_requests == []


def test_the_schedule_launches_only_never_run_shards(postgres_instance, pipeline_env):
    requests = evaluate(postgres_instance, 3)
    assert [r.partition_key for r in requests] == ["0", "1", "2"]
    assert all(r.tags["mmc4/stage"] == "download" for r in requests)

    assert materialize_shard(postgres_instance, PIPELINE).success
    failed = materialize_shard(postgres_instance, PIPELINE, "0", raise_on_error=False)
    assert not failed.success
    keys = [r.partition_key for r in evaluate(postgres_instance, 50)]
    assert len(keys) == 50 and "0" not in keys and "42" not in keys
    assert keys[:2] == ["1", "2"]


def test_a_second_process_sees_the_same_history(postgres_instance, postgres_home, pipeline_env):
    """What the webserver, the daemon and runs on other machines rely on: a new instance loaded
    from the same dagster.yaml and variables reads what another one wrote."""
    assert materialize_shard(postgres_instance, "raw_docs").success
    with dg.DagsterInstance.from_config(str(postgres_home.path)) as other:
        (record,) = other.get_run_records()
        assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
        assert other.get_latest_materialization_event(dg.AssetKey("raw_docs")) is not None
