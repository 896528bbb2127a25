"""CPU per image of the image work alone: our prepare_image vs img2dataset's Resizer.

Why: on the realistic web both downloaders are CPU-bound, so their rates are bounded by what
checking, shrinking and re-encoding one image costs. This measures that cost by itself, on the
benchmark web's own image pool (each image once per round, uniform weights), single-threaded,
user + system CPU, side by side in one run. Its inverse is a ceiling on images per CPU second
that no scheduling can pass.

    .venv/bin/python benchmarks/bench_imaging.py [--rounds 10]

img2dataset's Resizer runs with the options bench_download.py gives img2dataset: 800 px on the
longest side, only if bigger (OpenCV decode, INTER_AREA resize, JPEG quality 95 re-encode).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT / ".bench" / "realweb-pool"

sys.path.insert(0, str(ROOT))

from bench_download import IMG2DATASET_BIN, MAX_SIDE, _ensure_img2dataset  # noqa: E402

IMG2DATASET_PYTHON = IMG2DATASET_BIN.with_name("python")

# Runs in img2dataset's own environment; prints one JSON line.
_IMG2DATASET_TIMER = r"""
import io, json, os, sys
from img2dataset.resizer import Resizer
paths, rounds = json.loads(sys.argv[1]), int(sys.argv[2])
resize = Resizer(image_size=int(sys.argv[3]), resize_mode="keep_ratio_largest",
                 resize_only_if_bigger=True)
bodies = [open(p, "rb").read() for p in paths]
for body in bodies:
    resize(io.BytesIO(body))
start = os.times()
failed = 0
for _ in range(rounds):
    for body in bodies:
        failed += resize(io.BytesIO(body))[-1] is not None
end = os.times()
print(json.dumps({"cpu_s": end.user - start.user + end.system - start.system,
                  "images": rounds * len(bodies), "failed": failed}))
"""


def time_ours(paths: list[Path], rounds: int) -> dict:
    from mmc4_assets.downloader.imaging.prepare import prepare_image
    from mmc4_assets.downloader.scheduling.fetch_loop import tune_memory

    tune_memory()  # as in a fetch process
    bodies = [path.read_bytes() for path in paths]
    for body in bodies:
        prepare_image(body, max_side=MAX_SIDE)
    start = os.times()
    for _ in range(rounds):
        for body in bodies:
            prepare_image(body, max_side=MAX_SIDE)
    end = os.times()
    cpu = end.user - start.user + end.system - start.system
    return {"cpu_s": cpu, "images": rounds * len(bodies), "failed": 0}


def time_img2dataset(paths: list[Path], rounds: int) -> dict:
    _ensure_img2dataset()
    out = subprocess.run(
        [
            str(IMG2DATASET_PYTHON),
            "-c",
            _IMG2DATASET_TIMER,
            json.dumps([str(p) for p in paths]),
            str(rounds),
            str(MAX_SIDE),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    from mmc4_assets.devtools.real_web import RealWebConfig, write_pool

    paths = write_pool(RealWebConfig(), POOL)
    print(f"{len(paths)} pool images in {POOL}, {args.rounds} rounds each")
    results = {"ours": time_ours(paths, args.rounds)}
    results["img2dataset"] = time_img2dataset(paths, args.rounds)
    print("\n| | CPU ms per image | images per CPU s (ceiling) | failed |\n|---|---|---|---|")
    for name, r in results.items():
        ms = 1000 * r["cpu_s"] / r["images"]
        print(f"| {name} | {ms:.2f} | {1000 / ms:.0f} | {r['failed']} |")
    ours, peer = (results[k]["cpu_s"] / results[k]["images"] for k in ("ours", "img2dataset"))
    print(f"\nimg2dataset's CPU per image / ours: {peer / ours:.2f}x")


if __name__ == "__main__":
    main()
