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
"""

from __future__ import annotations

import numpy as np

from .pil import Image

HASH_SIZE = 8
_SIDE = HASH_SIZE * 4  # imagehash's highfreq_factor
_SQUARE = (_SIDE, _SIDE)
_n = np.arange(_SIDE)
# DCT-II basis, rows k = 0..7: cos(pi * k * (2n + 1) / 2N).
_BASIS = np.cos(np.pi * np.arange(HASH_SIZE)[:, None] * (2 * _n[None, :] + 1) / (2 * _SIDE))
_WEIGHTS = 1 << np.arange(HASH_SIZE * HASH_SIZE - 1, -1, -1, dtype=np.uint64)


def phash_bits(pixels: np.ndarray) -> np.ndarray:
    """The 8x8 boolean pHash of a 32x32 grayscale array."""
    low = _BASIS @ pixels.astype(np.float64) @ _BASIS.T
    return low > np.median(low)


def phash_hex(image: Image.Image) -> str:
    """The 16 hex digit pHash of a decoded PIL image (any mode, any size)."""
    if image.mode == "RGB":  # Pillow-SIMD resamples RGB with SIMD, "L" without: 4x faster
        small = image.resize(_SQUARE, Image.Resampling.LANCZOS, reducing_gap=2.0).convert("L")
    else:
        small = image.convert("L").resize(_SQUARE, Image.Resampling.LANCZOS, reducing_gap=2.0)
    bits = phash_bits(np.asarray(small)).reshape(-1)
    return f"{int(_WEIGHTS[bits].sum()):016x}"


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hex hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()
