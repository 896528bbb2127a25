"""robots.txt (RFC 9309) against real servers on 127.0.0.x: what it forbids is never requested."""

from __future__ import annotations

import dataclasses
import json
import time
import zlib

from mmc4_assets.corpus.status import check_status, retryable_mask
from mmc4_assets.downloader import ImageRef, download_shard
from mmc4_assets.downloader.politeness.ledger import SiteLedger
from mmc4_assets.downloader.politeness.robots import origin_of
from mmc4_assets.storage import layout
from mmc4_assets_tests.downloader.fetching.test_breaker import SETTINGS as BREAKER_SETTINGS
from mmc4_assets_tests.support.local_server import image_bytes, refusing_url, send

SMALL = image_bytes(300, 200)
SETTINGS = dataclasses.replace(BREAKER_SETTINGS, respect_robots_txt=True, per_site=8)
PATHS = ("/a.jpg", "/private/b.jpg", "/nomm/c.jpg", "/x/d.jpg")


def robots_route(body: bytes | str, status: int = 200, ctype: str = "text/plain"):
    data = body.encode() if isinstance(body, str) else body
    return lambda h: send(h, status, data, ctype)


def host_with(server, robots, host: str = "127.0.0.1", paths=PATHS):
    routes = {path: (lambda h: send(h, 200, SMALL)) for path in paths}
    if robots is not None:
        routes["/robots.txt"] = robots
    return server(routes, host=host)


def refs_for(servers, paths=PATHS) -> list[ImageRef]:
    return [
        ImageRef(doc, index, f"{doc}-{index}.jpg", s.url(path))
        for doc, s in enumerate(servers)
        for index, path in enumerate(paths)
    ]


def outcomes(table) -> dict[tuple[int, int], str]:
    return {(int(r.doc), int(r.index)): r.outcome for r in table.itertuples()}


def test_disallowed_paths_are_never_requested_and_our_token_beats_star(server, tmp_path):
    star_only = host_with(server, robots_route("User-agent: *\nDisallow: /private/\n"))
    ours = host_with(
        server,
        robots_route(
            "User-agent: *\nDisallow: /private/\n\n"
            "User-agent: mmc4-assets\nDisallow: /nomm/\nAllow: /\n"
        ),
        host="127.0.0.2",
    )
    refs = refs_for([star_only, ours])
    stats: dict = {}
    table = download_shard(refs, data_dir=tmp_path, shard=1, settings=SETTINGS, stats=stats)
    assert outcomes(table) == {
        (0, 0): "ok",
        (0, 1): "robots_disallowed",  # `*` forbids it
        (0, 2): "ok",
        (0, 3): "ok",
        (1, 0): "ok",
        (1, 1): "ok",  # our group replaces `*`, and allows it
        (1, 2): "robots_disallowed",
        (1, 3): "ok",
    }
    assert star_only.count("/private/b.jpg") == 0 and ours.count("/nomm/c.jpg") == 0
    assert star_only.count("/robots.txt") == ours.count("/robots.txt") == 1  # once per host
    refused = table[table.outcome == "robots_disallowed"]
    assert (refused.attempts == 0).all() and refused.path.isna().all()
    assert refused.error.str.contains("robots.txt disallows").all()
    assert not retryable_mask(refused).any()
    assert stats["robots_txt_fetched"] == 2 and stats["robots_txt_from_cache"] == 0
    assert check_status(table, refs, tmp_path) == []
    # Every robots.txt request carried our User-Agent, the product token first.
    agents = {h.get("User-Agent") for p, _, h in star_only.requests if p == "/robots.txt"}
    assert agents == {SETTINGS.user_agent} and SETTINGS.user_agent.startswith("mmc4-assets/")


def ledger_rows(url: str) -> dict[str, tuple[float, int, bytes | None]]:
    ledger = SiteLedger.open(url)
    with ledger._transaction(write=False) as cursor:
        cursor.execute("SELECT origin, fetched_at, status, body FROM mmc4_robots")
        rows = {o: (t, s, bytes(b) if b is not None else None) for o, t, s, b in cursor}
    ledger.close()
    return rows


def ledger_sql(url: str, statement: str, *args) -> None:
    ledger = SiteLedger.open(url)
    with ledger._transaction(write=True) as cursor:
        cursor.execute(statement.replace("?", ledger._marker), list(args))
    ledger.close()


def test_runs_sharing_a_ledger_read_robots_txt_from_it_for_24_hours(server, tmp_path, ledger_url):
    host = host_with(server, robots_route("User-agent: *\nDisallow: /x/\n"))
    origin = origin_of(host.url("/"))
    refs = refs_for([host])
    shared = dataclasses.replace(SETTINGS, ledger_url=ledger_url)
    first = download_shard(refs, data_dir=tmp_path, shard=1, settings=shared)
    fetched_at, status, body = ledger_rows(ledger_url)[origin]
    assert status == 200 and b"Disallow: /x/" in zlib.decompress(body)
    assert not (tmp_path / "robots").exists()  # no object per origin any more
    stats: dict = {}
    # Another data folder, the same ledger: read from it; a lone run (no ledger) fetches.
    again = download_shard(refs, data_dir=tmp_path / "b", shard=2, settings=shared, stats=stats)
    assert stats["robots_txt_from_cache"] == 1 and stats["robots_txt_fetched"] == 0
    lone = download_shard(refs, data_dir=tmp_path / "c", shard=3, settings=SETTINGS)
    assert host.count("/robots.txt") == 2
    for table in (first, again, lone):
        assert outcomes(table)[(0, 3)] == "robots_disallowed"
    # Past 24 hours an entry is fetched again, as is a damaged one; a save forgets other
    # origins' entries past 24 hours, and keeps the row that says when the table was made.
    day_ago = time.time() - 25 * 3600
    aged = "UPDATE mmc4_robots SET fetched_at = ? WHERE origin = ?"
    ledger_sql(ledger_url, aged, day_ago, origin)
    ledger_sql(
        ledger_url,
        "INSERT INTO mmc4_robots (origin, fetched_at, status) VALUES (?, ?, 404)",
        "http://gone.example:80",
        day_ago,
    )
    download_shard(refs, data_dir=tmp_path, shard=4, settings=shared)
    assert host.count("/robots.txt") == 3
    rows = ledger_rows(ledger_url)
    assert set(rows) == {origin, ""} and rows[origin][0] > time.time() - 60
    ledger_sql(ledger_url, "UPDATE mmc4_robots SET body = ? WHERE origin = ?", b"junk", origin)
    download_shard(refs, data_dir=tmp_path, shard=5, settings=shared)
    assert host.count("/robots.txt") == 4


def test_the_old_layout_is_read_during_the_tables_first_day(server, tmp_path, ledger_url):
    host = host_with(server, robots_route("User-agent: *\nDisallow: /x/\n"))
    origin = origin_of(host.url("/"))
    refs = refs_for([host])
    shared = dataclasses.replace(SETTINGS, ledger_url=ledger_url)
    old = tmp_path / layout.robots_txt(origin)  # what earlier versions wrote, one per origin
    old.parent.mkdir(parents=True)
    entry = {"origin": origin, "fetched_at": time.time() - 60, "status": 200}
    old.write_text(json.dumps({**entry, "body": "User-agent: *\nDisallow: /a.jpg\n"}))
    stats: dict = {}
    table = download_shard(refs, data_dir=tmp_path, shard=1, settings=shared, stats=stats)
    assert host.count("/robots.txt") == 0 and stats["robots_txt_from_cache"] == 1
    assert outcomes(table)[(0, 0)] == "robots_disallowed"  # the old entry's rule was obeyed
    # A day after the table was made no old entry can be fresh: the folder is not read.
    ledger_sql(ledger_url, "UPDATE mmc4_robots SET fetched_at = ? WHERE origin = ''", 0.0)
    table = download_shard(refs, data_dir=tmp_path, shard=2, settings=shared)
    assert host.count("/robots.txt") == 1 and outcomes(table)[(0, 3)] == "robots_disallowed"
    assert outcomes(table)[(0, 0)] == "ok"


def test_unavailable_robots_txt_allows_and_unreachable_forbids_for_now(
    server, silent_server, tmp_path
):
    big = "User-agent: *\nDisallow: /private/\n" + "# padding\n" * 60_000  # ~600 KiB
    big += "User-agent: *\nDisallow: /x/\n"  # past the first 500 KiB: not read
    hosts = [
        host_with(server, robots_route("no", 404), host="127.0.0.1"),
        host_with(server, robots_route("forbidden", 403), host="127.0.0.2"),
        host_with(
            server,
            robots_route(b"<html><body>Welcome</body></html>", 200, "text/html"),
            host="127.0.0.3",
        ),
        host_with(server, robots_route(big), host="127.0.0.4"),
        host_with(
            server, lambda h: send(h, 301, b"", "text/plain", {"Location": "/r2"}), host="127.0.0.5"
        ),
        host_with(server, robots_route("oops", 503), host="127.0.0.6"),
    ]
    hosts[4].routes["/r2"] = robots_route("User-agent: *\nDisallow: /a.jpg\n")
    silent = silent_server("127.0.0.7")
    refusing = refusing_url("127.0.0.8", "")
    refs = refs_for(hosts)
    refs += [ImageRef(10, i, f"s{i}.jpg", silent.url(path)) for i, path in enumerate(PATHS)]
    refs += [ImageRef(11, i, f"r{i}.jpg", f"{refusing}{path}") for i, path in enumerate(PATHS)]
    table = download_shard(refs, data_dir=tmp_path, shard=1, settings=SETTINGS)
    got = outcomes(table)
    for doc in (0, 1, 2):  # 404, 403, an HTML page: nothing forbidden
        assert [got[(doc, i)] for i in range(4)] == ["ok"] * 4
    # Oversize: the first 500 KiB are obeyed, the rest is not read.
    assert [got[(3, i)] for i in range(4)] == ["ok", "robots_disallowed", "ok", "ok"]
    assert [got[(4, i)] for i in range(4)] == ["robots_disallowed", "ok", "ok", "ok"]
    # 5xx, silence, refusal: "complete disallow" for this run, as retryable failures.
    rows = table.set_index(["doc", "index"])
    assert {got[(5, i)] for i in range(4)} == {"http_error"}
    assert (rows.loc[5, "http_status"] == 503).all()
    assert {got[(10, i)] for i in range(4)} == {"timeout"}
    assert {got[(11, i)] for i in range(4)} == {"connection_error"}
    failed = table[table.doc.isin([5, 10, 11])]
    assert retryable_mask(failed).all() and (failed.attempts == 0).all()
    assert table[table.doc.isin([5, 10])].error.str.contains("robots.txt").all()
    # The refusals of robots.txt opened the host's breaker, which says so.
    assert table[table.doc == 11].error.str.contains("refused", case=False).all()
    assert hosts[5].fetches() == 0  # no image was asked of a host whose robots.txt failed
    assert silent.accepted == 1  # one connection, no answer: not tried again this run
    assert check_status(table, refs, tmp_path) == []


def test_a_redirect_into_a_disallowed_origin_is_not_followed(server, tmp_path):
    target = host_with(server, robots_route("User-agent: *\nDisallow: /private/\n"), "127.0.0.2")
    start = server(
        {
            "/go": lambda h: send(
                h, 302, b"", "text/plain", {"Location": target.url("/private/b.jpg")}
            ),
            "/ok": lambda h: send(h, 302, b"", "text/plain", {"Location": target.url("/a.jpg")}),
        }
    )
    refs = [ImageRef(0, 0, "go.jpg", start.url("/go")), ImageRef(0, 1, "ok.jpg", start.url("/ok"))]
    table = download_shard(refs, data_dir=tmp_path, shard=1, settings=SETTINGS)
    assert outcomes(table) == {(0, 0): "robots_disallowed", (0, 1): "ok"}
    assert target.count("/private/b.jpg") == 0 and target.count("/robots.txt") == 1


def test_a_crawl_delay_spaces_one_request_at_a_time(server, tmp_path):
    host = host_with(
        server,
        robots_route("User-agent: *\nCrawl-delay: 0.4\n"),
        paths=[f"/{i}.jpg" for i in range(4)],
    )
    refs = refs_for([host], paths=[f"/{i}.jpg" for i in range(4)])
    stats: dict = {}
    table = download_shard(refs, data_dir=tmp_path, shard=1, settings=SETTINGS, stats=stats)
    assert (table.outcome == "ok").all() and stats["origins_with_crawl_delay"] == 1
    starts = sorted(t for p, t, _ in host.requests if p != "/robots.txt")
    assert len(starts) == 4 and host.max_active == 1
    assert min(b - a for a, b in zip(starts, starts[1:], strict=False)) >= 0.35


def test_a_long_crawl_delay_leaves_what_cannot_wait_for_a_later_run(server, tmp_path):
    paths = [f"/{i}.jpg" for i in range(6)]
    host = host_with(server, robots_route("User-agent: mmc4-assets\nCrawl-delay: 2\n"), paths=paths)
    table = download_shard(refs_for([host], paths), data_dir=tmp_path, shard=1, settings=SETTINGS)
    # total_deadline 5 s: the images that can start within it, one every 2 s, are fetched.
    assert sorted(table.outcome) == ["ok"] * 3 + ["rate_limited"] * 3
    assert host.fetches() == 3
    left = table[table.outcome == "rate_limited"]
    assert left.error.str.contains("asks 2s between requests").all() and retryable_mask(left).all()


def test_robots_txt_can_be_turned_off(server, tmp_path):
    host = host_with(server, robots_route("User-agent: *\nDisallow: /\n"))
    settings = dataclasses.replace(SETTINGS, respect_robots_txt=False)
    table = download_shard(refs_for([host]), data_dir=tmp_path, shard=1, settings=settings)
    assert (table.outcome == "ok").all() and host.count("/robots.txt") == 0
