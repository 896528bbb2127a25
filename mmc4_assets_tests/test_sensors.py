"""The stale-image sensor evaluated against a real instance with materialized shards."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest
from PIL import Image

from mmc4_assets.corpus.status import read_status
from mmc4_assets.resources import CorpusStorage, StalenessPolicy
from mmc4_assets.sensors import STALE_RUN_CONFIG, stale_images_sensor
from mmc4_assets_tests.support.materialize import materialize_shard
from mmc4_assets_tests.support.shards import write_image_shard

PIPELINE = "raw_docs downloaded_images status_report"
FRESH = StalenessPolicy()
EVERYTHING_OLD = StalenessPolicy(max_age_days=0)
NO_COOLDOWN = StalenessPolicy(retry_cooldown_hours=0)


class ImageHost:
    """A loopback host whose answer per path the test can change: ok, 500 or 404."""

    def __init__(self):
        self.modes: dict[str, str] = {}
        self.requests: Counter[str] = Counter()
        self.conditional: Counter[str] = Counter()
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                host.requests[self.path] += 1
                mode = host.modes.get(self.path, "ok")
                if mode != "ok":
                    self.send_response(int(mode))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = host.body(self.path)
                etag = f'"{hashlib.sha1(body).hexdigest()}"'
                if self.headers.get("If-None-Match"):
                    host.conditional[self.path] += 1
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def body(path: str) -> bytes:
        shade = int(hashlib.sha1(path.encode()).hexdigest()[:2], 16)
        buffer = io.BytesIO()
        Image.new("RGB", (120, 90), (shade, 255 - shade, 90)).save(buffer, "JPEG")
        return buffer.getvalue()

    def urls(self, *names: str) -> list[str]:
        return [f"{self.base}/{name}.jpg" for name in names]


@pytest.fixture
def host():
    image_host = ImageHost()
    yield image_host
    image_host.server.shutdown()


def tick(instance, policy: StalenessPolicy, cursor: str | None = None) -> dg.SensorResult:
    # Entered as a context manager so its resources are released here, not whenever the garbage
    # collector gets to them (which would reset Dagster's context state under a later test).
    with dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"storage": CorpusStorage(), "staleness": policy},
    ) as context:
        result = stale_images_sensor(context)
    if isinstance(result, dg.SkipReason):
        return dg.SensorResult(run_requests=[], cursor=cursor)
    return result


def run_request(instance, request: dg.RunRequest, policy: StalenessPolicy):
    """Execute a run the sensor asked for, as the daemon would."""
    return materialize_shard(
        instance,
        "downloaded_images status_report",
        partition=request.partition_key,
        run_config=request.run_config,
        tags=request.tags,
        staleness=policy,
    )


def test_fresh_shards_request_nothing(instance, pipeline_env, shard_folder, host):
    write_image_shard(shard_folder, 43, host.urls("a", "b"))
    assert materialize_shard(instance, PIPELINE, "43").success
    assert tick(instance, FRESH).run_requests == []


def test_old_copies_are_revalidated_with_conditional_requests(
    instance, pipeline_env, shard_folder, host
):
    write_image_shard(shard_folder, 43, host.urls("a", "b", "c"))
    assert materialize_shard(instance, PIPELINE, "43").success
    before = read_status(pipeline_env, 43)

    requests = tick(instance, EVERYTHING_OLD).run_requests
    assert len(requests) == 1
    assert requests[0].partition_key == "43"
    assert requests[0].run_config == STALE_RUN_CONFIG
    assert requests[0].tags["mmc4/stale_reason"] == "due"

    host.requests.clear()
    assert run_request(instance, requests[0], EVERYTHING_OLD).success
    assert host.conditional == Counter({"/a.jpg": 1, "/b.jpg": 1, "/c.jpg": 1})
    after = read_status(pipeline_env, 43)
    assert set(after["outcome"]) == {"ok"}
    assert (after["fetched_at"] > before["fetched_at"]).all()
    assert list(after["sha256"]) == list(before["sha256"])


def test_retryable_failure_past_cooldown_reruns_only_that_image(
    instance, pipeline_env, shard_folder, host
):
    host.modes["/b.jpg"] = "500"
    write_image_shard(shard_folder, 43, host.urls("a", "b"))
    assert materialize_shard(instance, PIPELINE, "43").success
    assert list(read_status(pipeline_env, 43)["outcome"]) == ["ok", "http_error"]

    assert tick(instance, FRESH).run_requests == []  # still cooling down
    requests = tick(instance, NO_COOLDOWN).run_requests
    assert [r.partition_key for r in requests] == ["43"]

    host.modes.clear()
    host.requests.clear()
    assert run_request(instance, requests[0], NO_COOLDOWN).success
    assert host.requests == Counter({"/b.jpg": 1})
    assert list(read_status(pipeline_env, 43)["outcome"]) == ["ok", "ok"]


def test_missing_file_requests_one_run_that_restores_it(instance, pipeline_env, shard_folder, host):
    write_image_shard(shard_folder, 43, host.urls("a", "b", "c"))
    assert materialize_shard(instance, PIPELINE, "43").success
    assert tick(instance, FRESH).run_requests == []
    (pipeline_env / "images" / "43" / "img0001.jpg").unlink()

    requests = tick(instance, FRESH).run_requests
    assert len(requests) == 1 and requests[0].tags["mmc4/stale_reason"] == "files_changed"
    host.requests.clear()
    assert run_request(instance, requests[0], FRESH).success
    assert host.requests == Counter({"/b.jpg": 1})
    assert (pipeline_env / "images" / "43" / "img0001.jpg").is_file()
    assert tick(instance, FRESH).run_requests == []


def test_a_404_on_revalidation_marks_gone_and_deletes_our_copy(
    instance, pipeline_env, shard_folder, host
):
    write_image_shard(shard_folder, 43, host.urls("a", "b"))
    assert materialize_shard(instance, PIPELINE, "43").success
    host.modes["/a.jpg"] = "404"
    (request,) = tick(instance, EVERYTHING_OLD).run_requests
    assert run_request(instance, request, EVERYTHING_OLD).success
    table = read_status(pipeline_env, 43)
    assert list(table["outcome"]) == ["gone", "ok"], table[["outcome", "http_status", "error"]]
    assert table["path"].isna().tolist() == [True, False]
    assert not (pipeline_env / "images" / "43" / "img0000.jpg").exists()
    assert (pipeline_env / "images" / "43" / "img0001.jpg").exists()


def test_cursor_walks_shards_in_chunks_and_run_keys_follow_report_versions(
    instance, pipeline_env, shard_folder, host
):
    for shard in (43, 44, 45):
        write_image_shard(shard_folder, shard, host.urls(f"s{shard}"))
        assert materialize_shard(instance, PIPELINE, str(shard)).success
    one_per_tick = StalenessPolicy(max_age_days=0, shards_per_tick=1)

    first = tick(instance, one_per_tick)
    second = tick(instance, one_per_tick, first.cursor)
    assert [r.partition_key for r in first.run_requests] == ["43"]
    assert [r.partition_key for r in second.run_requests] == ["44"]
    assert json.loads(second.cursor)["last_shard"] == 44

    # a full lap later, the same report version gives the same run key: the daemon skips it
    again = tick(instance, one_per_tick, tick(instance, one_per_tick, second.cursor).cursor)
    assert again.run_requests[0].run_key == first.run_requests[0].run_key
    # a new report for shard 43 is a new version, so a new key
    assert run_request(instance, first.run_requests[0], one_per_tick).success
    lap = tick(instance, one_per_tick, again.cursor)
    lap = tick(instance, one_per_tick, tick(instance, one_per_tick, lap.cursor).cursor)
    assert lap.run_requests[0].partition_key == "43"
    assert lap.run_requests[0].run_key != first.run_requests[0].run_key


def test_requests_per_tick_are_capped_and_the_rest_wait(instance, pipeline_env, shard_folder, host):
    for shard in (43, 44, 45):
        write_image_shard(shard_folder, shard, host.urls(f"s{shard}"))
        assert materialize_shard(instance, PIPELINE, str(shard)).success
    capped = StalenessPolicy(max_age_days=0, max_runs_per_tick=2)
    first = tick(instance, capped)
    assert [r.partition_key for r in first.run_requests] == ["43", "44"]
    second = tick(instance, capped, first.cursor)
    assert [r.partition_key for r in second.run_requests][0] == "45"


def test_a_shard_materialized_between_ticks_is_not_skipped(
    instance, pipeline_env, shard_folder, host
):
    for shard in (43, 44, 45):
        write_image_shard(shard_folder, shard, host.urls(f"s{shard}"))
    for shard in (43, 45):
        assert materialize_shard(instance, PIPELINE, str(shard)).success
    one_per_tick = StalenessPolicy(max_age_days=0, shards_per_tick=1)
    first = tick(instance, one_per_tick)
    assert [r.partition_key for r in first.run_requests] == ["43"]
    assert materialize_shard(instance, PIPELINE, "44").success
    second = tick(instance, one_per_tick, first.cursor)
    assert [r.partition_key for r in second.run_requests] == ["44"]
