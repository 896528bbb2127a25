"""Hosts that refuse or never answer: their images end fast, other hosts are not held up."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mmc4_assets.corpus.status import check_status, retryable_mask
from mmc4_assets.downloader import DownloadSettings, ImageRef, download_shard
from mmc4_assets.downloader.fetching.breaker import HostBreaker
from mmc4_assets_tests.support.local_server import image_bytes, refusing_url, send

SMALL = image_bytes(300, 200)
SETTINGS = DownloadSettings(
    allow_private_networks=True,
    connect_timeout=1.0,
    read_timeout=0.5,
    total_deadline=5.0,
    backoff_base=0.05,
    backoff_max=0.1,
    per_site=2,
    adaptive=False,
    # One picture under many URLs here: not a stand-in (those: test_standins_run.py).
    standin_min_urls=0,
    breaker_failures=3,
    respect_robots_txt=False,  # the breaker itself (test_robots.py: hosts whose robots.txt fails)
)


def good_host_refs(server, count: int, first_doc: int) -> list[ImageRef]:
    s = server({f"/{i}.jpg": (lambda h: send(h, 200, SMALL)) for i in range(count)})
    return [ImageRef(first_doc + i, 0, f"good{i}.jpg", s.url(f"/{i}.jpg")) for i in range(count)]


def test_refusing_host_is_cut_off_and_others_are_not(server, tmp_path: Path):
    base = refusing_url("127.0.0.2", "")
    dead = [ImageRef(i, 0, f"dead{i}.jpg", f"{base}/{i}.jpg") for i in range(30)]
    refs = dead + good_host_refs(server, 10, first_doc=100)
    table = download_shard(refs, data_dir=tmp_path, shard=0, settings=SETTINGS)
    rows = table.set_index("doc")
    assert (rows.loc[:29, "outcome"] == "connection_error").all()
    assert (rows.loc[100:, "outcome"] == "ok").all()
    skipped = rows.loc[:29][rows.loc[:29, "attempts"] == 0]
    # At most per_site images were in flight when the third refusal opened the breaker.
    assert len(skipped) >= 30 - SETTINGS.breaker_failures - SETTINGS.per_site
    assert skipped["error"].str.startswith("host skipped: ").all()
    assert skipped["error"].str.contains("refused|connect", case=False).all()
    assert retryable_mask(table.loc[table.doc < 30]).all()  # the sensor will try them again
    assert check_status(table, refs, tmp_path) == []


def test_never_answering_host_is_cut_off(server, silent_server, tmp_path: Path):
    silent = silent_server("127.0.0.3")
    hung = [ImageRef(i, 0, f"hung{i}.jpg", silent.url(f"/{i}.jpg")) for i in range(20)]
    refs = hung + good_host_refs(server, 10, first_doc=100)
    table = download_shard(refs, data_dir=tmp_path, shard=0, settings=SETTINGS)
    rows = table.set_index("doc")
    assert (rows.loc[:19, "outcome"] == "timeout").all()
    assert (rows.loc[100:, "outcome"] == "ok").all()
    tried = rows.loc[:19][rows.loc[:19, "attempts"] > 0]
    # A host that never answered is not retried in the run: one attempt each, then the breaker.
    assert (tried["attempts"] == 1).all() and tried["error"].str.contains("no response").all()
    assert silent.accepted == len(tried) <= SETTINGS.breaker_failures + SETTINGS.per_site
    skipped = rows.loc[:19][rows.loc[:19, "attempts"] == 0]
    assert len(skipped) == 20 - len(tried)
    assert skipped["error"].str.contains("no answer this run").all()
    assert retryable_mask(table.loc[table.doc < 20]).all()
    assert not any((tmp_path / "images/0").glob("hung*"))


def test_host_that_answered_once_is_never_cut_off():
    breaker = HostBreaker(threshold=2)
    breaker.record_answer("a")
    for _ in range(5):
        breaker.record_failure("a", "timeout", "timeout", "slow")
    assert breaker.open_reason("a") is None and breaker.answered("a")
    breaker.record_failure("b", "refused", "connection_error", "refused")
    assert breaker.open_reason("b") is None
    breaker.record_failure("b", "refused", "connection_error", "refused")
    outcome, reason = breaker.open_reason("b")
    assert outcome == "connection_error" and "2 failed connections" in reason
    breaker.record_failure("c", "dns", "connection_error", "no such host")
    assert breaker.open_reason("c")[1].startswith("host skipped: name does not resolve")


def test_a_kept_copy_survives_its_host_being_cut_off(server, tmp_path: Path):
    s = server(
        {f"/{i}.jpg": (lambda h: send(h, 200, SMALL, headers={"ETag": '"v1"'})) for i in range(8)}
    )
    refs = [ImageRef(i, 0, f"{i}.jpg", s.url(f"/{i}.jpg")) for i in range(8)]
    first = download_shard(refs, data_dir=tmp_path, shard=1, settings=SETTINGS)
    s.close()  # the host goes away: every refresh is refused
    table = download_shard(
        refs,
        data_dir=tmp_path,
        shard=1,
        settings=SETTINGS,
        previous=first,
        targets={(i, 0) for i in range(8)},
    )
    assert (table.outcome == "ok").all()
    assert table["error"].str.startswith("refresh failed: connection_error").all()
    assert pd.Series([(tmp_path / p).is_file() for p in table["path"]]).all()
