"""The image library is an explicit, tested choice: Pillow-SIMD, with plain Pillow a fallback.

`make env` installs Pillow-SIMD (the `simd` extra) unless told `PIL=pillow`, and records its
choice in the venv (`pil-flavour`); these tests fail if another `PIL` is loaded, for instance
when plain Pillow was installed over the fork. Plain Pillow (installed aside by `make env`, in
the venv's `pillow-fallback` folder) must give the same outcomes: a test here runs the imaging
tests again with it first on the path (what `make test-pillow` does), and compares what both
libraries make of the same bodies, hostile ones included.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import PIL
import pytest

from mmc4_assets.downloader.imaging.pil import Image, avif_support, flavour
from mmc4_assets.downloader.imaging.prepare import ImageRejected, prepare_image
from mmc4_devtools.loopback_web import bomb_png

ROOT = Path(__file__).resolve().parents[3]
FALLBACK = Path(sys.prefix) / "pillow-fallback"


def expected_flavour() -> str:
    """What this run must load: MMC4_EXPECT_PIL, else make env's choice, else the default."""
    marker = Path(sys.prefix) / "pil-flavour"
    chosen = marker.read_text().strip() if marker.exists() else "pillow-simd"
    return os.environ.get("MMC4_EXPECT_PIL") or chosen


def test_the_chosen_pil_is_loaded():
    assert flavour() == expected_flavour(), f"PIL {PIL.__version__} from {PIL.__file__}"
    if flavour() == "pillow-simd":
        # Pillow-SIMD's own distribution, not a Pillow whose files lie over it.
        assert importlib.metadata.version("pillow-simd") == PIL.__version__
        assert re.fullmatch(r"\d+\.\d+\.\d+\.post\d+", PIL.__version__)
        assert Path(PIL.__file__).parent.parent == Path(
            importlib.metadata.distribution("pillow-simd").locate_file("")
        )
    else:
        assert not PIL.__version__.split(".")[-1].startswith("post")


def test_pillow_simd_resamples_with_simd():
    """Its SIMD resampling is compiled in: the fork's resampling functions are in _imaging."""
    if flavour() != "pillow-simd":
        pytest.skip("plain Pillow")
    from PIL import _imaging

    binary = Path(_imaging.__file__).read_bytes()
    # The fork's vertical and horizontal SIMD passes (plain Pillow has neither name).
    for name in (
        b"ImagingResampleVerticalConvolution8u",
        b"ImagingResampleHorizontalConvolution8u4x",
    ):
        assert name in binary, name
    # Built with AVX2 where the building CPU has it (the Makefile's CC): 256-bit registers in the
    # horizontal pass. Checked where binutils' objdump is at hand (it is wherever gcc is).
    cpu = Path("/proc/cpuinfo")
    if shutil.which("objdump") and cpu.exists() and " avx2" in cpu.read_text():
        code = subprocess.run(
            [
                "objdump",
                "-d",
                "--disassemble=ImagingResampleHorizontalConvolution8u4x",
                _imaging.__file__,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "ymm" in code, "Pillow-SIMD was built without -mavx2"


def test_avif_images_prepare():
    assert avif_support() in ("PIL", "pillow-avif-plugin")
    picture = Image.linear_gradient("L").resize((1600, 1200)).convert("RGB")
    buffer = io.BytesIO()
    picture.save(buffer, "AVIF", quality=80)
    prepared = prepare_image(buffer.getvalue())
    assert prepared.resized and (prepared.width, prepared.height) == (800, 600)
    assert prepared.mimetype == "image/png"  # formats we do not write back become PNG
    small = io.BytesIO()
    picture.resize((400, 300)).save(small, "AVIF", quality=80)
    kept = prepare_image(small.getvalue())
    assert not kept.resized and kept.data == small.getvalue() and kept.mimetype == "image/avif"
    with pytest.raises(ImageRejected) as caught:
        prepare_image(small.getvalue()[: len(small.getvalue()) // 2])
    assert caught.value.outcome == "corrupt"


# --------------------------------------------------------------------------- the fallback


def bodies() -> dict[str, bytes]:
    """Bodies of every kind prepare_image meets, made once by the library under test."""

    avif_support()  # the AVIF encoder too is registered on demand

    def encode(image, fmt, **options) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        return buffer.getvalue()

    def photo(width, height, mode="RGB"):
        noise = Image.effect_noise((width // 4, height // 4), 40).resize((width, height))
        return Image.merge(
            "RGB",
            [
                noise,
                Image.linear_gradient("L").resize((width, height)),
                noise.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            ],
        ).convert(mode)

    big, small = photo(1900, 1300), photo(640, 480)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotated
    jpeg = encode(big, "JPEG", quality=85)
    png = encode(photo(1200, 900, "RGBA"), "PNG")
    return {
        "jpeg_big": jpeg,
        "jpeg_small": encode(small, "JPEG", quality=85),
        "jpeg_exif_icc": encode(
            big,
            "JPEG",
            exif=exif.tobytes(),
            icc_profile=b"\x00" * 128,
        ),
        "jpeg_cmyk": encode(photo(1000, 900, "CMYK"), "JPEG"),
        "jpeg_gray_progressive": encode(photo(1700, 800, "L"), "JPEG", progressive=True),
        "png_rgba": png,
        "png_palette": encode(photo(900, 1000, "P"), "PNG"),
        "png_16bit": encode(photo(1000, 700, "L").convert("I;16"), "PNG"),
        "gif_big": encode(photo(1000, 600, "P"), "GIF"),
        "gif_small": encode(photo(300, 200, "P"), "GIF"),
        "webp_big": encode(big, "WEBP", quality=80),
        "webp_rgba_small": encode(photo(500, 400, "RGBA"), "WEBP"),
        "bmp": encode(photo(1200, 400), "BMP"),
        "tiff": encode(photo(900, 900), "TIFF", compression="tiff_lzw"),
        "avif": encode(photo(1000, 800), "AVIF", quality=70),
        "jpeg_truncated": jpeg[: len(jpeg) * 2 // 3],
        "png_truncated": png[: len(png) // 2],
        "jpeg_garbage": b"\xff\xd8\xff\xe0" + b"\x13" * 500,
        "html": b"<!DOCTYPE html><html><head><title>404</title></head><body>x</body></html>",
        "empty": b"",
        "bomb": bomb_png(),
    }


def outcomes(folder: Path) -> dict[str, list]:
    """What prepare_image makes of each body in ``folder``: outcome, type, size, kept or not."""
    result = {}
    for path in sorted(folder.iterdir()):
        try:
            p = prepare_image(path.read_bytes())
        except ImageRejected as rejected:
            result[path.name] = [rejected.outcome]
        else:
            with Image.open(io.BytesIO(p.data)) as out:
                written = [
                    out.format,
                    out.size,
                    out.mode,
                    "exif" in out.info,
                    "icc_profile" in out.info,
                ]
            result[path.name] = ["ok", p.mimetype, p.width, p.height, p.resized, written]
    return json.loads(json.dumps(result))


def run_with_plain_pillow(*args: str) -> subprocess.CompletedProcess:
    if not (FALLBACK / "PIL").is_dir():
        pytest.fail(f"no plain Pillow in {FALLBACK}: run `make env`")
    env = {**os.environ, "PYTHONPATH": str(FALLBACK), "MMC4_EXPECT_PIL": "pillow"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )


@pytest.fixture(scope="module")
def body_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bodies")
    for name, data in bodies().items():
        (folder / name).write_bytes(data)
    return folder


def test_plain_pillow_gives_the_same_outcomes(body_folder):
    """The same bodies through both libraries: same outcomes, types, sizes and metadata kept."""
    if flavour() == "pillow":
        pytest.skip("already plain Pillow")
    code = (
        "import json, sys; from pathlib import Path; import PIL;"
        "from mmc4_assets_tests.downloader.imaging.test_pil import outcomes;"
        "print(PIL.__version__); print(json.dumps(outcomes(Path(sys.argv[1]))))"
    )
    done = run_with_plain_pillow("-c", code, str(body_folder))
    assert done.returncode == 0, done.stderr
    version, plain = done.stdout.strip().splitlines()[-2:]
    assert not version.split(".")[-1].startswith("post"), version
    ours = outcomes(body_folder)
    assert json.loads(plain) == ours
    assert ours["jpeg_exif_icc"][-1][3:] == [True, True]
    assert {name for name, o in ours.items() if o[0] != "ok"} == {
        "jpeg_truncated",
        "png_truncated",
        "jpeg_garbage",
        "html",
        "empty",
        "bomb",
    }


@pytest.mark.system
def test_the_imaging_tests_pass_on_plain_pillow():
    """`make test-pillow`, from the suite: the imaging tests with plain Pillow first on the path."""
    if flavour() == "pillow":
        pytest.skip("already plain Pillow")
    here = Path(__file__).parent
    done = run_with_plain_pillow(
        "-m",
        "pytest",
        "-q",
        "-n",
        "0",
        "-p",
        "no:cacheprovider",
        str(here / "test_prepare.py"),
        str(here / "test_pil.py"),
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " failed" not in done.stdout


def test_avif_decoding_is_loaded_when_an_avif_body_arrives(tmp_path):
    """Not at import (its libraries cost every fetch process RSS): a fresh interpreter prepares
    an AVIF body without being told to load anything first."""
    assert avif_support() in ("PIL", "pillow-avif-plugin")
    body = tmp_path / "big.avif"
    picture = Image.linear_gradient("L").resize((1600, 1200)).convert("RGB")
    picture.save(body, "AVIF", quality=80)
    script = (
        "import sys; from pathlib import Path;"
        "from mmc4_assets.downloader.imaging.prepare import prepare_image;"
        "before = 'pillow_avif' in sys.modules;"
        f"prepared = prepare_image(Path({str(body)!r}).read_bytes());"
        "print(before, prepared.width, prepared.height)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.split() == ["False", "800", "600"]
