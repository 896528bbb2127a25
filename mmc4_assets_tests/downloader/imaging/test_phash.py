"""The perceptual hash: imagehash's pHash in numpy, from the pixels prepare_image decoded."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mmc4_assets.downloader.imaging.phash import hamming, phash_bits, phash_hex
from mmc4_assets.downloader.imaging.prepare import prepare_image
from mmc4_devtools.real_web.pool import photo

# str(imagehash.phash(photo(w, h, seed))) with imagehash 4.3.2 (scipy's DCT, plain Pillow 13),
# the pictures saved as PNG by this project's photo() and hashed in a throw-away venv.
IMAGEHASH_PHASH = {
    (640, 480, 1): "9de36ca292dcd60c",
    (300, 500, 2): "c248896f3627e74e",
    (1200, 800, 3): "e6f283932f3a3154",
    (97, 61, 4): "aa8f359a35359233",
    (800, 800, 5): "a6b126f8f73fa002",
}


def encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_dct_is_scipys_dct_ii():
    """The two matrix products give the 8x8 low block of the 2-D DCT-II, by its definition
    y[k] = 2 * sum_n x[n] cos(pi k (2n + 1) / 2N) (scipy.fftpack.dct's, unnormalised)."""
    pixels = np.random.default_rng(7).integers(0, 256, (32, 32)).astype(np.float64)
    n = np.arange(32)
    basis = 2 * np.cos(np.pi * n[:, None] * (2 * n[None, :] + 1) / 64)  # all 32 rows
    full = basis @ pixels @ basis.T
    low = full[:8, :8]
    assert np.array_equal(phash_bits(pixels), low > np.median(low))


@pytest.mark.parametrize("case", sorted(IMAGEHASH_PHASH))
def test_matches_imagehash(case):
    assert hamming(phash_hex(photo(*case)), IMAGEHASH_PHASH[case]) <= 2


def test_format_and_hamming():
    value = phash_hex(photo(320, 240, 9))
    assert len(value) == 16 and int(value, 16) >= 0 and value == value.lower()
    assert hamming(value, value) == 0
    assert hamming("0" * 16, "f" * 16) == 64 and hamming("0" * 15 + "3", "0" * 16) == 2


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGBA", "LA", "CMYK", "I;16"])
def test_every_common_mode_hashes(mode):
    image = photo(200, 150, 3)
    converted = image.convert(mode) if mode != "I;16" else image.convert("L").convert("I;16")
    assert len(phash_hex(converted)) == 16
    assert len(phash_hex(Image.new(mode, (1, 1)))) == 16


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_same_picture_resized_and_reencoded_is_close(seed):
    """A photo, and the same photo shrunk and re-encoded elsewhere, hash within 4 bits, through
    prepare_image's own decoding (reduced-scale JPEG draft, or the shrunk pixels)."""
    original = photo(1600, 1000, seed)
    big = prepare_image(encode(original, quality=90)).phash  # shrunk to 800 px
    small = prepare_image(encode(original.resize((480, 300)), quality=70)).phash  # kept
    webp = prepare_image(encode(original.resize((200, 125)), "WEBP", quality=60)).phash
    tiny = prepare_image(encode(original.resize((120, 75)), quality=60)).phash
    reference = phash_hex(original)
    for value in (big, small, webp, tiny):
        assert hamming(value, reference) <= 4


def test_different_photos_are_far_apart():
    hashes = [prepare_image(encode(photo(900, 600, seed))).phash for seed in range(20, 30)]
    distances = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
    assert min(distances) > 10


def test_hashed_from_the_one_decode(monkeypatch):
    """prepare_image runs one decoder per image, kept or shrunk: the hash decodes nothing."""
    calls = []
    real = Image._getdecoder

    def counting(*args, **kwargs):
        calls.append(args[1] if len(args) > 1 else None)
        return real(*args, **kwargs)

    monkeypatch.setattr(Image, "_getdecoder", counting)
    for body in (
        encode(photo(600, 400, 1)),  # kept, drafted
        encode(photo(2000, 1200, 2)),  # shrunk
        encode(photo(1200, 900, 3), "PNG"),  # shrunk, not a JPEG
        encode(photo(300, 200, 4), "PNG"),  # kept
    ):
        calls.clear()
        prepared = prepare_image(body)
        assert prepared.phash is not None and len(calls) == 1, calls


def test_shrunk_image_hash_is_its_stored_file_hash():
    prepared = prepare_image(encode(photo(2400, 1600, 6), quality=92))
    assert prepared.resized
    with Image.open(io.BytesIO(prepared.data)) as stored:
        stored.load()
        assert hamming(prepared.phash, phash_hex(stored)) <= 2


def test_a_fetch_process_prepares_images_without_numpy():
    """The hash's numpy half runs where rows are kept: a fetch process's imports and image
    work stay numpy-free (about 12 MB per process; docs in imaging/phash.py)."""
    script = (
        "import io, sys\n"
        "from PIL import Image\n"
        "import mmc4_assets.downloader.scheduling.fetch_loop\n"
        "from mmc4_assets.downloader.imaging.prepare import prepare_image\n"
        "buffer = io.BytesIO()\n"
        "Image.new('RGB', (1200, 900), (200, 30, 30)).save(buffer, 'JPEG')\n"
        "prepared = prepare_image(buffer.getvalue())\n"
        "assert prepared.resized and len(prepared.thumbnail) == 32 * 32\n"
        "print('numpy' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
