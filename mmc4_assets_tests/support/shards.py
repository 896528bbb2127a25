"""Shard files written for a test: the sample shard's number, zipping, one document per image."""

from __future__ import annotations

import zipfile
from pathlib import Path

SHARD = 42


def zip_shard(plain: Path) -> Path:
    zipped = plain.with_name(plain.name + ".zip")
    with zipfile.ZipFile(zipped, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(plain, arcname=plain.name)
    plain.unlink()
    return zipped


def write_image_shard(folder: Path, shard: int, urls: list[str]) -> None:
    """A shard with one two-sentence document per image URL (for tests that pick each URL)."""
    import orjson

    lines = []
    for number, url in enumerate(urls):
        lines.append(
            orjson.dumps(
                {
                    "url": f"https://example.org/page/{number}",
                    "text_list": ["A first sentence.", "A second sentence."],
                    "image_info": [
                        {
                            "image_name": f"img{number:04d}.jpg",
                            "raw_url": url,
                            "face_detections": None,
                            "matched_text_index": 0,
                            "matched_sim": 0.3,
                        }
                    ],
                    "similarity_matrix": [[0.3, 0.2]],
                }
            )
        )
    (folder / f"{shard}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
