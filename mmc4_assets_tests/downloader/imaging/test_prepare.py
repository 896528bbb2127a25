"""Sniffing, validation, the pixel-bomb guard and the 800 px resize."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from mmc4_assets.downloader.imaging.prepare import ImageRejected, prepare_image, target_size
from mmc4_devtools.loopback_web import bomb_png


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gradient(width: int, height: int, mode: str = "RGB") -> Image.Image:
    image = Image.linear_gradient("L").resize((width, height))
    return image.convert(mode)


def test_target_size_like_mogrify():
    assert target_size(2000, 1000, 800) == (800, 400)
    assert target_size(1000, 3000, 800) == (267, 800)
    assert target_size(500, 300, 800) == (500, 300)
    assert target_size(10_000, 1, 800) == (800, 1)


def test_large_jpeg_resized_to_800():
    prepared = prepare_image(encode(gradient(2000, 1000), "JPEG", quality=95))
    assert (prepared.width, prepared.height) == (800, 400)
    assert prepared.mimetype == "image/jpeg" and prepared.resized
    with Image.open(io.BytesIO(prepared.data)) as out:
        assert out.format == "JPEG" and out.size == (800, 400)


def test_small_image_keeps_original_bytes():
    data = encode(gradient(500, 300), "JPEG")
    prepared = prepare_image(data)
    assert prepared.data is data or prepared.data == data
    assert (prepared.width, prepared.height, prepared.resized) == (500, 300, False)


def test_png_stays_png_and_keeps_alpha():
    prepared = prepare_image(encode(gradient(1600, 900, "RGBA"), "PNG"))
    assert prepared.mimetype == "image/png"
    with Image.open(io.BytesIO(prepared.data)) as out:
        assert out.format == "PNG" and out.size == (800, 450) and out.mode == "RGBA"


def test_other_format_saved_as_png():
    prepared = prepare_image(encode(gradient(1200, 400), "BMP"))
    assert prepared.mimetype == "image/png" and (prepared.width, prepared.height) == (800, 267)


def test_html_is_not_image():
    page = b"<!DOCTYPE html><html><head><title>404</title></head><body>gone</body></html>"
    with pytest.raises(ImageRejected) as caught:
        prepare_image(page)
    assert caught.value.outcome == "not_image"


@pytest.mark.parametrize("body", [b"", b"just some text", b"%PDF-1.4\n%\xe2\xe3\n1 0 obj"])
def test_non_images(body):
    with pytest.raises(ImageRejected) as caught:
        prepare_image(body)
    assert caught.value.outcome == "not_image"


@pytest.mark.parametrize("size", [(300, 200), (2000, 1500)])
def test_truncated_jpeg_is_corrupt(size):
    data = encode(gradient(*size), "JPEG")
    with pytest.raises(ImageRejected) as caught:
        prepare_image(data[: len(data) * 2 // 3])
    assert caught.value.outcome == "corrupt"


def test_truncated_png_is_corrupt():
    data = encode(gradient(300, 300), "PNG")
    with pytest.raises(ImageRejected) as caught:
        prepare_image(data[: len(data) // 2])
    assert caught.value.outcome == "corrupt"


def test_garbage_after_jpeg_header_is_corrupt():
    with pytest.raises(ImageRejected) as caught:
        prepare_image(b"\xff\xd8\xff\xe0" + b"\x13" * 500)
    assert caught.value.outcome == "corrupt"


def test_pixel_bomb_refused_without_decoding():
    data = bomb_png()
    assert len(data) < 200_000
    with pytest.raises(ImageRejected) as caught:
        prepare_image(data, max_pixels=100_000_000)
    assert caught.value.outcome == "too_large"


def test_pixel_guard_is_a_setting():
    with pytest.raises(ImageRejected) as caught:
        prepare_image(encode(gradient(1000, 1000), "JPEG"), max_pixels=500_000)
    assert caught.value.outcome == "too_large"


def test_cmyk_and_palette_survive_resize():
    assert prepare_image(encode(gradient(1000, 900, "CMYK"), "JPEG")).width == 800
    assert prepare_image(encode(gradient(1000, 900, "P"), "GIF")).mimetype == "image/gif"
