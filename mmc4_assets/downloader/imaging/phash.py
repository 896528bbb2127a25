"""The perceptual hash of an image: pHash as ``imagehash.phash`` defines it, in numpy.

Grayscale (``convert("L")``), Lanczos to 32x32, the 2-D DCT-II, the 8x8 block of its lowest
frequencies (the DC term included), one bit per coefficient: above the block's median. The 64
bits, row by row, first bit the most significant, are written as 16 hex digits: the string
``str(imagehash.phash(image))`` gives for the same pixels. The DCT is two matrix products with
the first 8 rows of the 32-point cosine basis (scipy's unnormalised DCT-II scales every
coefficient alike, which the median comparison ignores), so neither scipy nor imagehash (whose
dependencies would replace Pillow-SIMD with plain Pillow) is needed.

Hashed from pixels the caller has already decoded: the hash needs only frequencies up to 3.5
cycles per image, which a JPEG decoded at reduced scale keeps.

In two steps, so that the fetch processes never import numpy (about 12 MB of each process; on
the realistic web the fetch tree's peak went from 498 MB to 553 MB with it): ``thumbnail`` (Pillow
alone, where the pixels are decoded: 1,024 bytes of gray) and ``from_thumbnail`` (numpy, where
the run keeps its rows: the run's own process, which has numpy for pandas anyway).
"""

from __future__ import annotations

import functools

from .pil import Image

HASH_SIZE = 8
_SIDE = HASH_SIZE * 4  # imagehash's highfreq_factor
_SQUARE = (_SIDE, _SIDE)


@functools.cache
def _tables():
    """numpy and the DCT-II basis (rows k = 0..7: cos(pi k (2n + 1) / 2N)), on first use."""
    import numpy as np

    n = np.arange(_SIDE)
    basis = np.cos(np.pi * np.arange(HASH_SIZE)[:, None] * (2 * n[None, :] + 1) / (2 * _SIDE))
    weights = 1 << np.arange(HASH_SIZE * HASH_SIZE - 1, -1, -1, dtype=np.uint64)
    return np, basis, weights


def phash_bits(pixels):
    """The 8x8 boolean pHash of a 32x32 grayscale array."""
    np, basis, _ = _tables()
    low = basis @ pixels.astype(np.float64) @ basis.T
    return low > np.median(low)


def thumbnail(image: Image.Image) -> bytes:
    """The 32x32 gray pixels the hash of a decoded PIL image (any mode, any size) is made of."""
    if image.mode == "RGB":  # Pillow-SIMD resamples RGB with SIMD, "L" without: 4x faster
        small = image.resize(_SQUARE, Image.Resampling.LANCZOS, reducing_gap=2.0).convert("L")
    else:
        small = image.convert("L").resize(_SQUARE, Image.Resampling.LANCZOS, reducing_gap=2.0)
    return small.tobytes()


def from_thumbnail(pixels: bytes) -> str:
    """The 16 hex digit pHash of ``thumbnail``'s pixels."""
    np, _, weights = _tables()
    bits = phash_bits(np.frombuffer(pixels, dtype=np.uint8).reshape(_SQUARE)).reshape(-1)
    return f"{int(weights[bits].sum()):016x}"


def phash_hex(image: Image.Image) -> str:
    """The 16 hex digit pHash of a decoded PIL image (any mode, any size)."""
    return from_thumbnail(thumbnail(image))


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hex hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()
