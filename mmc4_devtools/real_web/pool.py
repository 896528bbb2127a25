"""The image pool: a few dozen photo-like pictures rendered once (and cached by ``pool_key``),
which every URL of the web serves one of."""

from __future__ import annotations

import hashlib
import io
import os
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mmc4_devtools.loopback_web import render_image
from mmc4_devtools.real_web.config import RealWebConfig


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like picture: soft 1/f structure, a few hard edges, sensor grain.

    Why not flat gradients: decode, resize and encode costs, and byte sizes (~1-1.5 bits per
    pixel as JPEG q85), must look like the web's. Built small and scaled up, so even 3000 px
    takes a fraction of a second.
    """
    rng = np.random.default_rng(seed)
    scale = 192 / max(width, height)
    sw, sh = max(2, round(width * scale)), max(2, round(height * scale))
    luma = np.zeros((sh, sw), np.float32)
    amplitude, cells = 80.0, 3
    while cells <= 192:
        field_ = rng.normal(0, 1, (max(2, cells * sh // 192), max(2, cells * sw // 192)))
        grown = Image.fromarray(field_.astype(np.float32), mode="F").resize((sw, sh), 3)
        luma += np.asarray(grown) * amplitude
        amplitude, cells = amplitude * 0.6, cells * 2
    tint = rng.normal(0, 1, (2, 2, 3)).astype(np.float32)
    chroma = np.stack(
        [np.asarray(Image.fromarray(tint[..., c], mode="F").resize((sw, sh), 2)) for c in range(3)],
        -1,
    )
    base = rng.integers(70, 170, 3)
    small = np.clip(luma[..., None] + chroma * 35 + base, 0, 255).astype(np.uint8)
    picture = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(picture)
    for _ in range(int(rng.integers(2, 7))):
        x0, x1 = sorted(rng.integers(0, width, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height, 2).tolist())
        colour = tuple(int(c) for c in rng.integers(20, 235, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1 + 1, y1 + 1), fill=colour)
    grain = np.random.default_rng(seed % 7).integers(0, 16, (256, 256, 1), dtype=np.uint8)
    reps = (-(-height // 256), -(-width // 256), 3)
    pixels = np.asarray(picture, dtype=np.int16) + np.tile(grain, reps)[:height, :width] - 8
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def served_body(picture: bytes, image: int) -> bytes:
    """The bytes image number ``image`` is served as: its pool picture and a trailer naming it.

    Each URL of the web is its own image, as on the real web: a site's images are not one body
    under many URLs, which marks a stand-in (issue 24). Every decoder stops at the picture's end
    (a JPEG's EOI, a PNG's IEND, a GIF's trailer, a WebP's RIFF size), so the pixels, sizes and
    decoding cost are the pool picture's, for 16 bytes more.
    """
    return picture + b"mmc4-image%06d" % image


def pool_formats(config: RealWebConfig) -> list[str]:
    rng = random.Random(config.seed * 7919 + config.pool_size)
    names = [name for name, _ in config.formats]
    weights = [weight for _, weight in config.formats]
    return rng.choices(names, weights=weights, k=config.pool_size)


def _pool_size(rng: random.Random, max_side: int, fmt: str) -> tuple[int, int]:
    """Web sizes: a third small, a third 500-1000 px, the rest larger, up to ``max_side``."""
    if fmt == "gif":  # animations and graphics: small
        longest = rng.randint(120, 600)
    else:
        bucket = rng.random()
        low, high = (150, 500) if bucket < 0.3 else (500, 1000) if bucket < 0.65 else (1000, 2000)
        if bucket >= 0.9:
            low, high = 2000, 3000
        longest = rng.randint(low, high)
    longest = max(16, min(longest, max_side))
    aspect = rng.choice([1.0, 4 / 3, 3 / 2, 16 / 9, 2.0])
    other = max(16, round(longest / aspect))
    return (longest, other) if rng.random() < 0.65 else (other, longest)


def render_pool_image(config: RealWebConfig, index: int) -> bytes:
    fmt = pool_formats(config)[index]
    seed = config.seed * 100_003 + index
    width, height = _pool_size(random.Random(seed), config.max_side, fmt)
    out = io.BytesIO()
    if fmt == "png" and index % 2:  # half the PNGs are flat graphics, half are photos
        return render_image(width, height, seed, "png")
    picture = photo(width, height, seed)
    if fmt == "jpg":
        picture.save(out, "JPEG", quality=85)
    elif fmt == "webp":
        picture.save(out, "WEBP", quality=80, method=0)
    elif fmt == "gif":
        picture.quantize(128, method=Image.Quantize.FASTOCTREE).save(out, "GIF")
    else:
        picture.save(out, "PNG", compress_level=1)
    return out.getvalue()


def pool_key(config: RealWebConfig) -> str:
    """What the pool's bytes depend on (a cache key)."""
    relevant = (config.seed, config.pool_size, config.max_side, config.formats, 1)
    return hashlib.sha1(repr(relevant).encode()).hexdigest()[:12]


def write_pool(config: RealWebConfig, folder: Path, processes: int = 0) -> list[Path]:
    """Render the pool into ``folder`` (kept across runs when it is a cache folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    formats = pool_formats(config)
    paths = [folder / f"{pool_key(config)}-{i}.{fmt}" for i, fmt in enumerate(formats)]
    todo = [i for i, path in enumerate(paths) if not path.exists()]
    if todo:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(len(todo), processes or os.cpu_count() or 1)) as pool:
            bodies = pool.map(render_pool_image, [config] * len(todo), todo)
            for i, body in zip(todo, bodies, strict=True):
                tmp = paths[i].with_name(f".{paths[i].name}.{os.getpid()}")
                tmp.write_bytes(body)
                os.replace(tmp, paths[i])
    return paths
