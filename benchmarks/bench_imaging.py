"""CPU per image of the image work alone, and the quality of its output: ours vs img2dataset.

Why: on the realistic web both downloaders are CPU-bound, so their rates are bounded by what
checking, shrinking and re-encoding one image costs. This measures that cost by itself, on the
benchmark web's own image pool (each image once per round, uniform weights), single-threaded,
CPU time of the process (user + system, ``time.process_time``) per image, side by side in one
run, per input format. Its inverse is a ceiling on images per CPU second that no scheduling can
pass. A cheaper resize must not be a worse one, so each output is also compared, after decoding,
with a Lanczos resize of the same original (fully decoded by PIL, alpha over white as img2dataset
composites it) to the output's own size: PSNR over RGB and SSIM on luma (Gaussian 11x11, sigma
1.5, as Wang et al.). An image within 800 px that a tool keeps is compared with the original.

    .venv/bin/python benchmarks/bench_imaging.py [--rounds 10] [--pool-size 48]

img2dataset's Resizer runs with the options bench_download.py gives img2dataset: 800 px on the
longest side, only if bigger (OpenCV decode, INTER_AREA resize, JPEG quality 95 re-encode of
every image, kept ones too).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT / ".bench" / "realweb-pool"

sys.path.insert(0, str(ROOT))

from bench_download import IMG2DATASET_BIN, MAX_SIDE, _ensure_img2dataset  # noqa: E402

IMG2DATASET_PYTHON = IMG2DATASET_BIN.with_name("python")

# Runs in img2dataset's own environment; writes each output once, prints one JSON line.
_IMG2DATASET_TIMER = r"""
import io, json, os, sys, time
from img2dataset.resizer import Resizer
paths, rounds, out = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[4]
resize = Resizer(image_size=int(sys.argv[3]), resize_mode="keep_ratio_largest",
                 resize_only_if_bigger=True)
bodies = [open(p, "rb").read() for p in paths]
failed = []
for i, body in enumerate(bodies):
    img_str, *_, err = resize(io.BytesIO(body))
    if err is None:
        with open(os.path.join(out, f"{i}.jpg"), "wb") as f:
            f.write(img_str)
    failed.append(err is not None)
cpu = [0.0] * len(bodies)
clock = time.process_time
for _ in range(rounds):
    for i, body in enumerate(bodies):
        start = clock()
        resize(io.BytesIO(body))
        cpu[i] += clock() - start
print(json.dumps({"cpu_s": [c / rounds for c in cpu], "failed": failed}))
"""


def fmt_of(path: Path) -> str:
    return {"jpg": "JPEG", "png": "PNG", "webp": "WebP", "gif": "GIF"}.get(
        path.suffix[1:], path.suffix[1:].upper()
    )


def time_prepare(
    bodies: list[bytes], rounds: int, prepare: Callable[[bytes], bytes | None]
) -> tuple[list[float], list[bytes | None]]:
    """CPU seconds per image (mean over rounds) and each image's output (None: rejected)."""
    outputs = [prepare(body) for body in bodies]  # warm up, and what each one gives
    cpu = [0.0] * len(bodies)
    clock = time.process_time
    for _ in range(rounds):
        for i, body in enumerate(bodies):
            start = clock()
            prepare(body)
            cpu[i] += clock() - start
    return [c / rounds for c in cpu], outputs


def ours_prepare() -> Callable[[bytes], bytes | None]:
    from mmc4_assets.downloader.imaging.prepare import ImageRejected, prepare_image
    from mmc4_assets.downloader.scheduling.process_tuning import tune_memory

    tune_memory()  # as in a fetch process

    def prepare(body: bytes) -> bytes | None:
        try:
            return prepare_image(body, max_side=MAX_SIDE).data
        except ImageRejected:
            return None

    return prepare


def time_img2dataset(paths: list[Path], rounds: int, out: Path) -> dict:
    _ensure_img2dataset()
    result = subprocess.run(
        [
            str(IMG2DATASET_PYTHON),
            "-c",
            _IMG2DATASET_TIMER,
            json.dumps([str(p) for p in paths]),
            str(rounds),
            str(MAX_SIDE),
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- quality


def decoded(data: bytes):
    """The image fully decoded (accurate IDCT, no draft), RGB, alpha composited over white."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            image = image.convert("RGBA")
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, image).convert("RGB")
        return image.convert("RGB")


def reference(original, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if original.size == size:
        return np.asarray(original)
    return np.asarray(original.resize(size, Image.Resampling.LANCZOS))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _gaussian_blur(x: np.ndarray, sigma: float = 1.5, taps: int = 11) -> np.ndarray:
    """Separable Gaussian, 'valid' borders (as Wang et al.'s reference implementation)."""
    k = np.exp(-0.5 * ((np.arange(taps) - taps // 2) / sigma) ** 2)
    k /= k.sum()
    h = sum(k[i] * x[i : x.shape[0] - taps + 1 + i] for i in range(taps))
    return sum(k[i] * h[:, i : h.shape[1] - taps + 1 + i] for i in range(taps))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of the luma (BT.601) of two RGB images of one size."""
    weights = np.array([0.299, 0.587, 0.114])
    x, y = a.astype(np.float64) @ weights, b.astype(np.float64) @ weights
    if min(x.shape) < 11:
        return 1.0 if np.array_equal(a, b) else float("nan")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _gaussian_blur(x), _gaussian_blur(y)
    sxx = _gaussian_blur(x * x) - mx * mx
    syy = _gaussian_blur(y * y) - my * my
    sxy = _gaussian_blur(x * y) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return float(np.mean(num / den))


def quality(original, output: bytes | None) -> dict | None:
    """Size and PSNR/SSIM of ``output`` against the Lanczos reference of its ``original``
    (decoded)."""
    if output is None:
        return None
    out = decoded(output)
    ref = reference(original, out.size)
    pixels = np.asarray(out)
    return {
        "size": out.size,
        "resized": out.size != original.size,
        "big": max(original.size) > MAX_SIDE,
        "psnr": psnr(pixels, ref),
        "ssim": ssim(pixels, ref),
    }


# --------------------------------------------------------------------------- report


def summarize(paths, originals, cpu, outputs) -> dict:
    """Per format: images, CPU ms per image, and the quality of resized and of kept outputs."""
    rows: dict[str, dict] = {}
    for path, original, seconds, output in zip(paths, originals, cpu, outputs, strict=True):
        q = quality(original, output)
        for key in (fmt_of(path), "all"):
            row = rows.setdefault(key, {"n": 0, "ms": 0.0, "failed": 0, "q": []})
            row["n"] += 1
            row["ms"] += 1000 * seconds
            row["failed"] += output is None
            if q is not None:
                row["q"].append(q)
    for row in rows.values():
        row["ms"] /= row["n"]
    return rows


def mean_of(qs: list[dict], key: str) -> str:
    values = [q[key] for q in qs]
    if not values:
        return "-"
    if all(math.isinf(v) for v in values):
        return "identical"
    finite = [v for v in values if not math.isinf(v)]
    note = f" ({len(values) - len(finite)} identical)" if len(finite) < len(values) else ""
    return f"{sum(finite) / len(finite):.{2 if key == 'psnr' else 4}f}{note}"


def report(results: dict[str, dict], flavour: str) -> None:
    ours, peer = results["ours"], results["img2dataset"]
    print(f"\nours: {flavour}; quality against a Lanczos resize of the same original")
    print(
        "\n| format | images (> 800 px) | ours ms CPU | img2dataset ms CPU | img2dataset / ours "
        "| PSNR dB ours / img2dataset, shrunk | SSIM ours / img2dataset, shrunk "
        "| PSNR dB ours / img2dataset, kept (<= 800 px) | failed ours / img2dataset |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for key in sorted(ours, key=lambda k: (k == "all", k)):
        o, p = ours[key], peer[key]
        big = sum(q["big"] for q in o["q"])
        shrunk_o = [q for q in o["q"] if q["big"]]
        shrunk_p = [q for q in p["q"] if q["big"]]
        kept_o = [q for q in o["q"] if not q["big"]]
        kept_p = [q for q in p["q"] if not q["big"]]
        print(
            f"| {key} | {o['n']} ({big}) | {o['ms']:.2f} | {p['ms']:.2f} "
            f"| {p['ms'] / o['ms']:.2f}x "
            f"| {mean_of(shrunk_o, 'psnr')} / {mean_of(shrunk_p, 'psnr')} "
            f"| {mean_of(shrunk_o, 'ssim')} / {mean_of(shrunk_p, 'ssim')} "
            f"| {mean_of(kept_o, 'psnr')} / {mean_of(kept_p, 'psnr')} "
            f"| {o['failed']} / {p['failed']} |"
        )
    a, b = ours["all"]["ms"], peer["all"]["ms"]
    print(
        f"\nall: ours {a:.2f} ms, img2dataset {b:.2f} ms of CPU per image "
        f"(ceilings {1000 / a:.0f} and {1000 / b:.0f} images per CPU second); "
        f"img2dataset's CPU per image / ours: {b / a:.2f}x"
    )


def check_sizes(paths, bodies, outputs) -> int:
    """Our outputs: 800 px max side, aspect kept, never enlarged, small originals kept."""
    from PIL import Image

    from mmc4_assets.downloader.imaging.prepare import target_size

    wrong = 0
    for path, body, output in zip(paths, bodies, outputs, strict=True):
        with Image.open(io.BytesIO(body)) as original:
            size = original.size
        if output is None:
            print(f"{path.name} rejected")
            wrong += 1
            continue
        with Image.open(io.BytesIO(output)) as out:
            ok = out.size == target_size(*size, MAX_SIDE)
        if max(size) <= MAX_SIDE:
            ok = ok and output == body
        if not ok:
            wrong += 1
            print(f"wrong output for {path.name}: {size}")
    return wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--pool-size", type=int, default=48, help="the benchmark web's: 48")
    args = parser.parse_args()
    from mmc4_assets.downloader.imaging.pil import flavour
    from mmc4_devtools.real_web import RealWebConfig, write_pool

    paths = write_pool(RealWebConfig(pool_size=args.pool_size), POOL)
    bodies = [path.read_bytes() for path in paths]
    print(f"{len(paths)} pool images in {POOL}, {args.rounds} rounds each")
    cpu, outputs = time_prepare(bodies, args.rounds, ours_prepare())
    if check_sizes(paths, bodies, outputs):
        sys.exit("our outputs are not the sizes they should be")
    with tempfile.TemporaryDirectory() as out:
        peer = time_img2dataset(paths, args.rounds, Path(out))
        peer_outputs = [
            None if failed else (Path(out) / f"{i}.jpg").read_bytes()
            for i, failed in enumerate(peer["failed"])
        ]
    originals = [decoded(body) for body in bodies]  # each decoded once, for both tools
    results = {
        "ours": summarize(paths, originals, cpu, outputs),
        "img2dataset": summarize(paths, originals, peer["cpu_s"], peer_outputs),
    }
    report(results, flavour())


if __name__ == "__main__":
    main()
