"""A shard run marks its stand-ins and tiny images, and only them, on real servers on 127.0.0.x."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pandas as pd
from PIL import Image

from mmc4_assets.corpus.status import check_status, write_status
from mmc4_assets.downloader import DownloadSettings, download_shard
from mmc4_assets.downloader.refs import ImageRef
from mmc4_assets_tests.support.local_server import send
from mmc4_devtools.real_web.pool import photo

SETTINGS = DownloadSettings(
    allow_private_networks=True,
    connect_timeout=1.0,
    read_timeout=1.0,
    total_deadline=5.0,
    max_attempts=1,
    adaptive=False,
    # The loopback imgur: its redirects end at /removed.png of 127.0.0.3 (the shipped list names
    # i.imgur.com, which does not resolve here).
    standin_urls=(("127.0.0.3", r"/removed\.png$"),),
)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


NO_HOTLINKING = encoded(photo(320, 200, 71), "JPEG", quality=80)
REMOVED = encoded(photo(161, 81, 72), "PNG")
PIXEL = encoded(Image.new("P", (1, 1)), "GIF")
PHOTO = encoded(photo(640, 480, 73), "JPEG", quality=85)
BIG_PHOTO = encoded(photo(1800, 1200, 74), "JPEG", quality=85)
OTHER = encoded(photo(500, 500, 75), "JPEG", quality=85)


def test_stand_ins_and_tiny_images_are_marked_and_real_photos_kept(server, tmp_path: Path):
    hotlink = server(
        {f"/dead/{i}.jpg": (lambda h: send(h, 200, NO_HOTLINKING)) for i in range(8)},
        host="127.0.0.2",
    )
    imgur = server(
        {
            **{
                f"/{i}.jpg": (
                    lambda h: send(h, 302, b"", "text/plain", {"Location": "/removed.png"})
                )
                for i in range(2)
            },
            "/removed.png": lambda h: send(h, 200, REMOVED, "image/png"),
        },
        host="127.0.0.3",
    )
    pixels = server(
        {f"/p/{i}.gif": (lambda h: send(h, 200, PIXEL, "image/gif")) for i in range(3)},
        host="127.0.0.4",
    )
    photos = server(
        {
            "/photo.jpg": lambda h: send(h, 200, PHOTO),
            "/big.jpg": lambda h: send(h, 200, BIG_PHOTO),
            "/other.jpg": lambda h: send(h, 200, OTHER),
        }
    )
    expected: dict[tuple[int, int], str] = {}
    refs: list[ImageRef] = []

    def use(doc: int, url: str, outcome: str) -> None:
        index = sum(1 for ref in refs if ref.doc == doc)
        refs.append(ImageRef(doc, index, f"{doc}_{index}.img", url))
        expected[(doc, index)] = outcome

    for i in range(8):  # one stand-in body under 8 URLs of one site, from 4 documents
        use(i % 4, hotlink.url(f"/dead/{i}.jpg"), "placeholder")
    use(5, hotlink.url("/dead/0.jpg"), "placeholder")  # a stand-in's URL in one more document
    for doc in (6, 7):  # dead images redirected to removed.png: too few to count, known by URL
        use(doc, imgur.url(f"/{doc - 6}.jpg"), "placeholder")
    for i in range(3):  # tracking pixels
        use(8 + i, pixels.url(f"/p/{i}.gif"), "too_small")
    for doc in (11, 12):  # a real photo used by two documents at one URL
        use(doc, photos.url("/photo.jpg"), "ok")
    for doc in range(13, 19):  # a real photo (shrunk) used by six documents at one URL
        use(doc, photos.url("/big.jpg"), "ok")
    use(0, photos.url("/other.jpg"), "ok")  # beside a stand-in in its document

    table = download_shard(refs, data_dir=tmp_path, shard=5, settings=SETTINGS)
    check(table, refs, expected, tmp_path)
    assert hotlink.count("/dead/0.jpg") == 2 and imgur.count("/removed.png") == 2
    # The photos used by several documents are recorded as duplicates of their first use,
    # never stand-ins, and nothing else is a duplicate.
    copies = table.set_index("doc").loc[lambda t: t.duplicate_of.notna(), "duplicate_of"]
    firsts = table.set_index("doc").image_name
    assert copies.to_dict() == {12: firsts[11], **{doc: firsts[13] for doc in range(14, 19)}}

    # A plain rerun: the marked images (no file) are fetched again and marked again; the real
    # photos are held.
    write_status(table, tmp_path, 5)
    lines = gzip.decompress((tmp_path / "status/5.tsv.gz").read_bytes()).decode().splitlines()
    codes = {line.split("\t")[2]: line.split("\t")[5] for line in lines}
    assert codes["1_0.img"] == "404" and codes["8_0.img"] == "422" and codes["11_0.img"] == "200"
    before = photos.fetches()
    again = download_shard(refs, data_dir=tmp_path, shard=5, settings=SETTINGS)
    check(again, refs, expected, tmp_path)
    assert photos.fetches() == before


def check(table: pd.DataFrame, refs, expected, data_dir: Path) -> None:
    got = {(int(r.doc), int(r.index)): r.outcome for r in table.itertuples()}
    assert got == expected, {k: (v, expected[k]) for k, v in got.items() if v != expected[k]}
    assert check_status(table, refs, data_dir) == []
    kept = {str(p.relative_to(data_dir)) for p in (data_dir / "images/5").iterdir()}
    assert kept == set(table.loc[table.outcome == "ok", "path"])
    marked = table[table.outcome != "ok"]
    assert marked.path.isna().all() and marked.body_sha256.notna().all()
    assert marked.error.str.startswith(("stand-in:", "1x1")).all()
    ends = table.loc[table.image_name.isin(["6_0.img", "7_0.img"]), "final_url"]
    assert len(ends) == 2 and ends.str.endswith("/removed.png").all()
