"""Status rows' fingerprints (body_sha256, phash, final_url): fetched, carried over, rebuilt.

Through download_shard against a real server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image

from mmc4_assets.corpus.status import status_parquet_path, write_status
from mmc4_assets.downloader import DownloadSettings, download_shard
from mmc4_assets.downloader.imaging.phash import hamming
from mmc4_assets.downloader.imaging.prepare import prepare_image
from mmc4_assets.downloader.refs import ImageRef
from mmc4_assets_tests.support.local_server import send
from mmc4_devtools.real_web.pool import photo

SETTINGS = DownloadSettings(
    allow_private_networks=True,
    connect_timeout=1.0,
    read_timeout=1.0,
    total_deadline=3.0,
    max_attempts=1,
    adaptive=False,
    fetch_processes=1,
)
FINGERPRINTS = ("body_sha256", "phash", "final_url")


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


BIG = jpeg(photo(2000, 1200, 31))
SMALL = jpeg(photo(500, 300, 32))
HTML = b"<html><body>no hotlinking</body></html>"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rows_of(table) -> dict[int, dict]:
    """Rows by index, nulls as None."""
    plain = table.astype(object).where(table.notna(), None)
    return {int(r["index"]): r for r in plain.to_dict("records")}


def test_fingerprints_of_fetched_carried_and_rebuilt_rows(server, tmp_path: Path):
    s = server(
        {
            "/big.jpg": lambda h: send(h, 200, BIG),
            "/small.jpg": lambda h: send(h, 200, SMALL),
            "/moved": lambda h: send(h, 302, b"", "text/plain", {"Location": "/small.jpg"}),
            "/html": lambda h: send(h, 200, HTML, "image/jpeg"),
        }
    )
    paths = ["/big.jpg", "/small.jpg", "/moved", "/html", "/missing"]
    refs = [ImageRef(0, i, f"{i}.jpg", s.url(path)) for i, path in enumerate(paths)]
    table = download_shard(refs, data_dir=tmp_path, shard=3, settings=SETTINGS)
    rows = rows_of(table)
    assert [rows[i]["outcome"] for i in range(5)] == ["ok", "ok", "ok", "not_image", "http_error"]
    big, small, moved, html, missing = (rows[i] for i in range(5))
    # The body as served, before shrinking; the stored file's sha256 is another.
    stored_big = (tmp_path / "images/3/0.jpg").read_bytes()
    assert big["body_sha256"] == sha(BIG) and big["sha256"] == sha(stored_big) != sha(BIG)
    assert small["body_sha256"] == small["sha256"] == sha(SMALL)
    assert moved["body_sha256"] == sha(SMALL) and moved["phash"] == small["phash"]
    assert big["phash"] == prepare_image(BIG).phash and small["phash"] == prepare_image(SMALL).phash
    assert hamming(big["phash"], small["phash"]) > 10
    assert moved["final_url"] == s.url("/small.jpg") and moved["url"] == s.url("/moved")
    assert [big["final_url"], small["final_url"]] == [s.url("/big.jpg"), s.url("/small.jpg")]
    # A body that is not an image still has its hash; no body, none.
    assert html["body_sha256"] == sha(HTML) and html["phash"] is None
    assert html["final_url"] == s.url("/html")
    assert missing["final_url"] == s.url("/missing")
    assert missing["body_sha256"] is None and missing["phash"] is None

    # A rerun holds the files: their rows, fingerprints included, are carried over.
    write_status(table, tmp_path, 3)
    requests = s.fetches()
    again = rows_of(download_shard(refs, data_dir=tmp_path, shard=3, settings=SETTINGS))
    assert s.fetches() - requests == 2  # the two failures, tried again
    for i in range(3):
        assert {k: again[i][k] for k in FINGERPRINTS} == {k: rows[i][k] for k in FINGERPRINTS}

    # Without the status table, rows are rebuilt from the files: the pixels give the perceptual
    # hash again, but neither the body as served nor the final URL is known.
    status_parquet_path(tmp_path, 3).unlink()
    requests = s.fetches()
    rebuilt = rows_of(download_shard(refs, data_dir=tmp_path, shard=3, settings=SETTINGS))
    assert s.fetches() - requests == 2
    for i in range(3):
        assert rebuilt[i]["outcome"] == "ok" and rebuilt[i]["attempts"] == 0
        assert rebuilt[i]["body_sha256"] is None and rebuilt[i]["final_url"] is None
        assert hamming(rebuilt[i]["phash"], rows[i]["phash"]) <= 2
    assert rebuilt[1]["phash"] == rows[1]["phash"]  # kept as served: the same pixels
