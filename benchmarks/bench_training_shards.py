"""Training-shard packing: ours (training_shards' pack_shard) vs OpenFlamingo's converter.

Why one script: both tools must pack the SAME documents and the SAME stored images in one run, or
the ratio means nothing. The shard, its images (longest side at most 800 px, as our downloader
stores them) and its status table are made first, untimed; then each tool runs as a child process
so its wall time and memory are its own. Ours also runs on a quarter of the shard, to show that
its peak memory does not grow with the shard.

    benchmarks/setup_openflamingo.sh PATH_TO_OPEN_FLAMINGO_CHECKOUT   # once
    flock /tmp/mmc4-bench.lock .venv/bin/python benchmarks/bench_training_shards.py

See benchmarks/README.md for what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

from bench_download import run_measured

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".bench"
OURS_PYTHON = ROOT / ".venv" / "bin" / "python"
CONVERTER_PYTHON = BENCH / "openflamingo-venv" / "bin" / "python"
CONVERTER = BENCH / "open_flamingo" / "open_flamingo" / "scripts" / "convert_mmc4_to_wds.py"
SHARD, SMALL_SHARD = 42, 43
MAX_SIDE = 800

sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- the input shard


def _stored_size(width: int, height: int) -> tuple[int, int]:
    """The size our downloader stores: longest side at most 800 px, never enlarged."""
    scale = min(1.0, MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def make_shard(work: Path, documents: int, failed_share: float, seed: int) -> dict:
    """Documents, stored images and a status table under work/data, plus the zipped shard and
    the image folder layout the converter reads. Returns what was made."""
    import orjson
    import pandas as pd

    from mmc4_assets.corpus.status import write_status
    from mmc4_devtools.loopback_web import parse_image_path, warm_cache
    from mmc4_devtools.sample_shard import generate_documents

    data = work / "data"
    docs = list(generate_documents(documents, seed=seed))
    rng = random.Random(seed)
    cache = BENCH / "webcache"
    rows, wanted = [], []
    for doc_number, document in enumerate(docs):
        for index, image in enumerate(document["image_info"]):
            width, height, pixel_seed, fmt = parse_image_path(urlsplit(image["raw_url"]).path)
            stored = _stored_size(width, height)
            held = rng.random() >= failed_share
            if held:
                wanted.append(
                    (image["image_name"], f"/img/{stored[0]}x{stored[1]}/{pixel_seed}.{fmt}")
                )
            rows.append(
                {
                    "shard": SHARD, "doc": doc_number, "index": index,
                    "image_name": image["image_name"], "url": image["raw_url"],
                    "outcome": "ok" if held else "http_error",
                    "http_status": None if held else 404,
                    "path": f"images/{SHARD}/{image['image_name']}" if held else None,
                    "fetched_at": pd.Timestamp("2026-11-01", tz="UTC"), "attempts": 1,
                }
            )  # fmt: skip
    started = time.perf_counter()
    rendered = warm_cache(cache, [path for _, path in wanted])
    print(f"rendered {rendered} new image(s) in {time.perf_counter() - started:.0f}s", flush=True)
    images = data / "images" / str(SHARD)
    images.mkdir(parents=True)
    for name, path in wanted:
        width_height, seed_ext = path.split("/")[2:]
        os.link(cache / f"{width_height}_{seed_ext}", images / name)
    write_status(pd.DataFrame(rows), data, SHARD)

    lines = [orjson.dumps(document) for document in docs]
    reassigned = data / "reassigned_docs"
    reassigned.mkdir(parents=True)
    (reassigned / f"{SHARD}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    # A quarter of the shard, same images, for the memory-is-flat comparison.
    quarter = max(1, documents // 4)
    (reassigned / f"{SMALL_SHARD}.jsonl").write_bytes(b"\n".join(lines[:quarter]) + b"\n")
    small_rows = [dict(row, shard=SMALL_SHARD) for row in rows if row["doc"] < quarter]
    write_status(pd.DataFrame(small_rows), data, SMALL_SHARD)

    # The converter's inputs: the shard zipped as the corpus ships it, images under {dir}/0/.
    zipped = work / f"docs_no_face_shard_{SHARD}_v2.jsonl.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipped.stem, b"\n".join(lines) + b"\n")
    (work / "converter_images").mkdir()
    (work / "converter_images" / "0").symlink_to(images)
    image_bytes = sum(f.stat().st_size for f in images.iterdir())
    return {
        "documents": documents,
        "quarter_documents": quarter,
        "images": len(rows),
        "images_held": len(wanted),
        "image_bytes": image_bytes,
    }


# --------------------------------------------------------------------------- the two tools


def run_ours(work: Path, shard: int, label: str) -> dict:
    cmd = [str(OURS_PYTHON), __file__, "--worker-ours", str(work / "data"), str(shard)]
    result = run_measured(cmd, cwd=ROOT, log=work / f"{label}.log")
    summary = work / f"ours-{shard}.json"
    if summary.exists():
        result.update(json.loads(summary.read_text()))
    return result


def worker_ours(data_dir: str, shard_text: str) -> None:
    """Child-process side of run_ours: what the training_shards asset does for one shard."""
    from mmc4_assets.corpus.status import read_status
    from mmc4_assets.training.packing import pack_shard

    data, shard = Path(data_dir), int(shard_text)
    started = time.perf_counter()
    result = pack_shard(
        data / "reassigned_docs" / f"{shard}.jsonl", read_status(data, shard), data, shard
    )
    summary = {
        "pack_s": time.perf_counter() - started,  # without interpreter start and imports
        "samples": result.stats.samples,
        "images_embedded": result.stats.images_embedded,
        "tars": len(result.parts),
        "output_bytes": result.bytes,
    }
    data.parent.joinpath(f"ours-{shard}.json").write_text(json.dumps(summary))


def run_converter(work: Path) -> dict:
    out = work / "converter_out"
    cmd = [
        *(str(CONVERTER_PYTHON), str(CONVERTER)),
        *("--output_dir", str(out)),
        *("--zip_files", str(work / f"docs_no_face_shard_{SHARD}_v2.jsonl.zip")),
        *("--image_dir", str(work / "converter_images")),
    ]
    result = run_measured(cmd, cwd=work, log=work / "converter.log")
    samples = images = output_bytes = 0
    for tar_path in sorted(out.glob("*.tar")):
        output_bytes += tar_path.stat().st_size
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    document = json.loads(tar.extractfile(member).read())
                    samples += 1
                    images += sum("image_base64" in e for e in document["image_info"])
    result.update(samples=samples, images_embedded=images, output_bytes=output_bytes)
    return result


# --------------------------------------------------------------------------- report


def _row(name: str, documents: int, r: dict) -> str:
    rate = documents / r["wall_s"] if r["wall_s"] else 0.0
    return (
        f"| {name} | {documents:,} | {r['wall_s']:.2f} | {rate:,.0f} | {r['samples']:,} | "
        f"{r['images_embedded']:,} | {r['output_bytes'] / 2**20:,.0f} | "
        f"{r['peak_tree_rss_mb']:.0f} | {r['max_single_rss_mb']:.0f} | {r['cpu_s']:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=3400, help="about one real shard")
    parser.add_argument("--failed-share", type=float, default=0.1, help="images not held")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-converter", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--worker-ours", nargs=2, metavar=("DATA", "SHARD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_ours:
        worker_ours(*args.worker_ours)
        return
    if not args.skip_converter and not (CONVERTER_PYTHON.exists() and CONVERTER.exists()):
        sys.exit("run benchmarks/setup_openflamingo.sh PATH_TO_OPEN_FLAMINGO_CHECKOUT first")

    BENCH.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-training-", dir=BENCH))
    try:
        made = make_shard(work, args.documents, args.failed_share, args.seed)
        print(f"shard: {made}", flush=True)
        results = {"ours": run_ours(work, SHARD, "ours")}
        results["ours_quarter"] = run_ours(work, SMALL_SHARD, "ours-quarter")
        if not args.skip_converter:
            results["converter"] = run_converter(work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(
        "\n| tool | documents | wall s | documents/s | samples | images embedded | output MB | "
        "peak RSS tree MB | max single RSS MB | CPU s |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    print(_row("mmc4_assets pack_shard", made["documents"], results["ours"]))
    quarter = made["quarter_documents"]
    print(_row("mmc4_assets pack_shard, quarter shard", quarter, results["ours_quarter"]))
    if "converter" in results:
        print(_row("OpenFlamingo convert_mmc4_to_wds.py", made["documents"], results["converter"]))
        ratio = results["converter"]["wall_s"] / results["ours"]["wall_s"]
        print(f"\nours / converter, documents/s: {ratio:.1f}x (goal >= 5x)")
    pack_s = results["ours"]["pack_s"]
    print(f"ours inside the process (no start-up): {made['documents'] / pack_s:,.0f} documents/s")
    print(
        f"ours peak RSS: {results['ours']['peak_tree_rss_mb']:.0f} MB for {made['documents']:,} "
        f"documents, {results['ours_quarter']['peak_tree_rss_mb']:.0f} MB for "
        f"{made['quarter_documents']:,}"
    )
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out / f"training_shards-{stamp}.json"
    path.write_text(json.dumps({"shard": made, "results": results}, indent=2))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
