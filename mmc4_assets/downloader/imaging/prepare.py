"""Decide whether a body is an image we keep, and shrink it to the corpus size.

Order matters for cost and safety: sniff the bytes (HTML error pages are common), read only the
header to learn the pixel count (a bomb is refused before any decoding), then decode once:
images already within ``max_side`` are decoded only to prove they are whole and keep their
original bytes; larger ones are decoded at reduced scale where the format allows (JPEG draft
with the accurate IDCT), resized like ``mogrify -resize "800x800>"`` (Lanczos) and saved in
their own format (JPEG quality 95 with its EXIF and ICC profile, PNG, GIF, WebP; other formats
become PNG under the given name). An animation over the limit keeps only its first frame. The
perceptual hash (``phash``) comes from those same decoded pixels, the stored ones when shrunk.
"""

from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass

from PIL import ImageFile

from .phash import from_thumbnail, thumbnail
from .pil import Image, avif_support
from .sniff import sniff_mimetype

ImageFile.LOAD_TRUNCATED_IMAGES = False

# Formats we write back as themselves; anything else is saved as PNG (lossless, every mode).
_SAVE_AS_SELF = {"JPEG", "PNG", "GIF", "WEBP"}
_MIME_OF = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
# Decoding a huge non-JPEG image needs its full pixel buffer: allow only a couple at a time.
_BIG_DECODE_PIXELS = 16_000_000
_big_decodes = threading.BoundedSemaphore(2)
# A JPEG kept as it is is decoded at reduced scale, but to at least this many pixels a side (or
# whole): its perceptual hash, from those pixels, stays within a few bits of a full decode's.
_HASHED_SIDE = 64


class ImageRejected(Exception):
    """The body is not an image we keep; ``outcome`` is its status outcome."""

    def __init__(self, outcome: str, message: str, mimetype: str | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.mimetype = mimetype


@dataclass
class PreparedImage:
    """Bytes to write and what they are."""

    data: bytes
    mimetype: str
    width: int
    height: int
    original_width: int
    original_height: int
    resized: bool
    # The gray 32x32 pixels of the perceptual hash (phash.py) of the pixels decoded here; None
    # when the mode cannot be hashed. The hash itself is made where the rows are kept.
    thumbnail: bytes | None = None

    @property
    def phash(self) -> str | None:
        """The perceptual hash, 16 hex digits."""
        return None if self.thumbnail is None else from_thumbnail(self.thumbnail)


def target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Size after fitting into max_side x max_side, aspect kept, never enlarged."""
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def prepare_image(
    data: bytes, *, max_side: int = 800, max_pixels: int = 100_000_000
) -> PreparedImage:
    """Validate ``data`` and return what to store, or raise ImageRejected."""
    if not data:
        raise ImageRejected("not_image", "empty body")
    mimetype = sniff_mimetype(data)
    if mimetype.startswith("text/") or mimetype in ("application/xhtml+xml", "application/json"):
        raise ImageRejected("not_image", f"body is {mimetype}", mimetype)
    looks_like_image = mimetype.startswith("image/")
    if data[4:8] == b"ftyp":  # ISO media (AVIF, HEIF): AVIF's decoder is loaded on demand
        avif_support()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageRejected("too_large", f"pixel bomb: {error}", mimetype) from None
        except Exception as error:  # noqa: BLE001 - Pillow raises many types on bad input
            outcome = "corrupt" if looks_like_image else "not_image"
            raise ImageRejected(outcome, f"cannot open {mimetype}: {error}", mimetype) from None
        # One decoder call for the whole body instead of one per 64 KB: each call gives the GIL
        # back and must win it again, and the event loop thread holds it most of the time.
        image.decodermaxblock = max(image.decodermaxblock, len(data))
        with image:
            return _prepare_opened(image, data, mimetype, max_side, max_pixels)


def _prepare_opened(image, data, mimetype, max_side, max_pixels) -> PreparedImage:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageRejected("corrupt", f"bad size {width}x{height}", mimetype)
    if width * height > max_pixels:
        raise ImageRejected("too_large", f"{width}x{height} exceeds {max_pixels} pixels", mimetype)
    if not mimetype.startswith("image/"):
        mimetype = Image.MIME.get(image.format or "", mimetype)
    new_size = target_size(width, height, max_side)
    if new_size == (width, height):
        if image.format == "JPEG":
            # Proving a JPEG whole needs its entropy decoding, not full-size pixels: 1/8 scale,
            # or larger where 1/8 would leave the perceptual hash under _HASHED_SIDE pixels.
            image.draft(image.mode, (_draft_side(width), _draft_side(height)))
        _decode(image, mimetype, width * height)
        return PreparedImage(data, mimetype, width, height, width, height, False, _phash_of(image))
    fmt = image.format or ""
    if fmt == "JPEG":
        # Decoded at the smallest scale (1/2, 1/4, 1/8) still at least the target size, with
        # libjpeg's accurate IDCT and smooth chroma upsampling: the fast ones cost 0.5 dB.
        image.draft(image.mode, new_size)
    _decode(image, mimetype, 0 if fmt == "JPEG" else width * height)
    out_format = fmt if fmt in _SAVE_AS_SELF else "PNG"
    info = image.info
    # Lanczos, as cheap as bilinear with Pillow-SIMD and 0.5 dB closer to the image: after the
    # JPEG draft the remaining factor is below two; other formats are first reduced by box
    # averaging to within twice the target (reducing_gap).
    resized = image.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    encoded = _encode(resized, out_format, info)
    return PreparedImage(
        encoded,
        _MIME_OF[out_format],
        new_size[0],
        new_size[1],
        width,
        height,
        True,
        _phash_of(resized),  # the stored pixels: what a check of the file finds again
    )


def _draft_side(side: int) -> int:
    return max((side + 7) // 8, min(side, _HASHED_SIDE))


def _phash_of(image: Image.Image) -> bytes | None:
    """The perceptual hash's pixels of an image already decoded, or None: a hash never fails
    an image."""
    try:
        return thumbnail(image)
    except Exception:  # noqa: BLE001 - an exotic mode convert("L") does not know
        return None


def _decode(image, mimetype: str, pixels: int) -> None:
    """Decode fully (truncation and corruption surface here, not in verify())."""
    try:
        if pixels > _BIG_DECODE_PIXELS:
            with _big_decodes:
                image.load()
        else:
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected("too_large", f"pixel bomb: {error}", mimetype) from None
    except MemoryError:
        raise ImageRejected("too_large", "not enough memory to decode", mimetype) from None
    except Exception as error:  # noqa: BLE001
        raise ImageRejected("corrupt", f"cannot decode: {error}", mimetype) from None


def _encode(image: Image.Image, out_format: str, info: dict) -> bytes:
    """Encode ``image`` in ``out_format`` with the modes and options that format wants."""
    options: dict = {}
    if info.get("icc_profile"):
        options["icc_profile"] = info["icc_profile"]
    if out_format == "JPEG":
        if image.mode not in ("L", "RGB", "CMYK"):
            image = image.convert("RGB")
        # Quality 95, as img2dataset's: at 90 the re-encoding alone costs 1.5 dB of PSNR.
        options.update(quality=95, optimize=False)
        if info.get("exif"):
            options["exif"] = info["exif"]  # keeps the Orientation tag meaningful
    elif out_format == "PNG":
        if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.mode else "RGB")
        options["compress_level"] = 1  # level 6 costs ten times the CPU for a fifth less
    elif out_format == "WEBP":
        if image.mode not in ("RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.mode else "RGB")
        options["quality"] = 90
    buffer = io.BytesIO()
    image.save(buffer, format=out_format, **options)
    return buffer.getvalue()


def verify_file_bytes(data: bytes, *, max_side: int, max_pixels: int) -> PreparedImage | None:
    """Describe a stored file if it is a whole image within max_side, else None (resume check)."""
    try:
        prepared = prepare_image(data, max_side=max_side, max_pixels=max_pixels)
    except ImageRejected:
        return None
    return None if prepared.resized else prepared
