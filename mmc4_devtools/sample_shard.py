"""A generated shard shaped like real mmc4, so the pipeline runs offline and benchmarks have input.

Images point at a loopback host: every `raw_url` is
`{image_base_url}/img/{width}x{height}/{seed}.{ext}`, which says everything a server needs to
generate that image (size, pixel seed, format).
Generation uses only Python's `random.Random`, so a seed always gives the same shard.
"""

from __future__ import annotations

import argparse
import math
import random
from array import array
from collections.abc import Iterator
from pathlib import Path

import orjson

from mmc4_assets.corpus.atomic import atomic_write

DEFAULT_IMAGE_BASE_URL = "http://127.0.0.1:8765"
MIN_SIDE, MAX_SIDE, LARGE_SIDE = 64, 2000, 800
IMAGE_COUNTS, IMAGE_COUNT_WEIGHTS = (1, 2, 3, 4, 5, 6, 7, 8), (30, 25, 15, 10, 7, 5, 4, 4)
WORDS = (
    "the a garden recipe summer city river old new local family photo season team market "
    "bread coffee travel house light morning story music game school road water market "
    "design paint wood stone window kitchen friends weekend trail beach winter festival"
).split()


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(5, 18))]
    return " ".join(words).capitalize() + "."


def _float32s(values: list[float]) -> list[float]:
    """Round to float32 and back, like the CLIP similarities stored in real shards."""
    return array("f", values).tolist()


def _image_size(rng: random.Random) -> tuple[int, int]:
    """A size in [64, 2000] px; about one in five has its longest side above 800 px."""
    if rng.random() < 0.2:
        longest = rng.randint(LARGE_SIDE + 1, MAX_SIDE)
    else:
        longest = rng.randint(MIN_SIDE, LARGE_SIDE)
    other = max(MIN_SIDE, round(longest * rng.uniform(0.5, 1.0)))
    return (longest, other) if rng.random() < 0.6 else (other, longest)


def _image(rng: random.Random, image_base_url: str) -> dict:
    ext = "png" if rng.random() < 0.2 else "jpg"
    width, height = _image_size(rng)
    return {
        "image_name": f"{rng.getrandbits(48):012x}.{ext}",
        "raw_url": f"{image_base_url}/img/{width}x{height}/{rng.getrandbits(32)}.{ext}",
        "face_detections": None,
    }


def _counts(index: int, rng: random.Random) -> tuple[int, int]:
    """(images, sentences): median about 2 and 13, with the awkward cases on a fixed schedule."""
    if index % 100 == 1:
        return 0, rng.randint(3, 20)
    if index % 20 == 2:
        sentences = rng.randint(1, 3)
        return sentences + rng.randint(1, 4), sentences
    sentences = max(1, min(80, int(rng.lognormvariate(math.log(13), 0.6))))
    return rng.choices(IMAGE_COUNTS, IMAGE_COUNT_WEIGHTS)[0], sentences


def _document(index: int, rng: random.Random, image_base_url: str) -> dict:
    n_images, n_sentences = _counts(index, rng)
    sentences = [_sentence(rng) for _ in range(n_sentences)]
    rows = []
    for _ in range(n_images):
        base, relevant = rng.uniform(0.12, 0.22), rng.randrange(n_sentences)
        row = [
            base + rng.gauss(0, 0.03) + (0.08 if j == relevant else 0.0) for j in range(n_sentences)
        ]
        rows.append(_float32s(row))
    if index % 10 == 3 and n_sentences > 1:
        # Duplicate sentences ("Click here.") give identical columns: a tie for lapjv.
        for _ in range(rng.randint(1, 3)):
            source, target = rng.sample(range(n_sentences), 2)
            sentences[target] = sentences[source]
            for row in rows:
                row[target] = row[source]
    if index % 25 == 4 and n_images > 1:
        rows[1] = list(rows[0])  # the same picture twice: identical rows
    images = [_image(rng, image_base_url) for _ in range(n_images)]
    for image, row in zip(images, rows, strict=True):
        best = max(range(n_sentences), key=row.__getitem__)
        image["matched_text_index"], image["matched_sim"] = best, row[best]
    return {
        "image_info": images,
        "similarity_matrix": rows,
        "url": f"https://www.example.com/{rng.choice(WORDS)}/{index}-{rng.getrandbits(24):06x}",
        "text_list": sentences,
        "could_have_url_duplicate": int(rng.random() < 0.05),
    }


def generate_documents(
    n: int, seed: int = 42, image_base_url: str = DEFAULT_IMAGE_BASE_URL
) -> Iterator[dict]:
    """Yield ``n`` mmc4-shaped documents, the same ones for the same seed.

    Included on a schedule: documents without images (index % 100 == 1), with more images than
    sentences (index % 20 == 2), with duplicate sentences (index % 10 == 3) and with a duplicated
    image (index % 25 == 4).
    """
    rng = random.Random(seed)
    base = image_base_url.rstrip("/")
    for index in range(n):
        yield _document(index, rng, base)


def write_sample_shard(
    path: str | Path,
    *,
    documents: int = 300,
    seed: int = 42,
    image_base_url: str = DEFAULT_IMAGE_BASE_URL,
) -> dict:
    """Write a sample shard as JSON lines (atomically) and return {documents, images}."""
    images = 0
    with atomic_write(path, "wb") as out:
        for doc in generate_documents(documents, seed, image_base_url):
            images += len(doc["image_info"])
            out.write(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE))
    return {"documents": documents, "images": images}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the .jsonl file to write")
    parser.add_argument("--documents", type=int, default=300)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--image-base-url", default=DEFAULT_IMAGE_BASE_URL)
    args = parser.parse_args(argv)
    summary = write_sample_shard(
        args.out, documents=args.documents, seed=args.seed, image_base_url=args.image_base_url
    )
    print(f"wrote {summary['documents']} documents, {summary['images']} images to {args.out}")


if __name__ == "__main__":
    main()
