"""The wheel holds the product alone, and the product runs on its own dependencies.

The wheel is built for real from a copy of the checkout (tests and dev tools included, so that
leaving them out is the package finder's doing), listed, unpacked, and every module in it is
imported in a fresh interpreter that sees the unpacked wheel and this venv's site-packages with
the dev-only distributions blocked: those the `dev` extra brings that the product's own
dependencies (and its `simd`, `pillow` and `k8s` extras) do not.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = "mmc4_assets"
PRODUCT_EXTRAS = ("simd", "pillow", "k8s")
# Importable from the checkout (make env), never from the product.
CHECKOUT_ONLY = ("mmc4_devtools", "mmc4_assets_tests")


def distributions_needed(name: str, extras: tuple[str, ...]) -> set[str]:
    """The installed distributions ``name`` with ``extras`` needs, itself and transitively."""
    found: set[str] = set()
    seen: set[tuple[str, str]] = set()
    stack = [(name, extra) for extra in ("", *extras)]
    while stack:
        wanted, extra = stack.pop()
        key = (canonicalize_name(wanted), extra)
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = distribution(wanted)
        except PackageNotFoundError:
            continue  # not installed here (another platform's, or an extra left out)
        found.add(key[0])
        for line in dist.requires or ():
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                stack.extend((req.name, sub) for sub in ("", *req.extras))
    return found


def top_level_modules(name: str) -> set[str]:
    """The top-level modules and packages a distribution installs."""
    dist = distribution(name)
    listed = dist.read_text("top_level.txt")
    if listed:
        return {line.strip() for line in listed.splitlines() if line.strip()}
    modules = set()
    for file in dist.files or ():
        parts = file.parts
        if parts[0] in ("..", "__pycache__") or parts[0].endswith((".dist-info", ".data")):
            continue
        if len(parts) > 1:
            modules.add(parts[0])
        elif parts[0].endswith(".py"):
            modules.add(parts[0][:-3])
        elif parts[0].endswith(".so"):
            modules.add(parts[0].split(".")[0])
    return modules


def dev_extra() -> set[str]:
    """The distributions the `dev` extra names (installed here)."""
    named = set()
    for line in distribution(PRODUCT).requires or ():
        req = Requirement(line)
        marker = req.marker
        if marker and marker.evaluate({"extra": "dev"}) and not marker.evaluate({"extra": ""}):
            named |= {canonicalize_name(req.name)} & distributions_needed(req.name, ())
    return named


def dev_only_modules() -> set[str]:
    """What the product may not import: what the dev extra names (uvloop included, though a
    product dependency brings it too), what it brings that the product's dependencies do not,
    and the checkout's own dev packages."""
    product = distributions_needed(PRODUCT, PRODUCT_EXTRAS)
    brought = distributions_needed(PRODUCT, ("dev",)) - product
    shared = set().union(*(top_level_modules(name) for name in product - dev_extra()))
    modules = set().union(*(top_level_modules(name) for name in brought | dev_extra()))
    return (modules - shared) | set(CHECKOUT_ONLY)


def build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the checkout, built offline with this venv's setuptools."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for folder in (PRODUCT, *CHECKOUT_ONLY):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    for file in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / file, source / file)
    out = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = out.glob("*.whl")
    return wheel


# Run with -I -S: no site (so no .pth file puts the checkout or the editable finder on the
# path), no user site, no PYTHON* variables, no current folder.
IMPORT_ALL = r"""
import importlib, importlib.abc, json, sys, traceback

wheel_dir, site_dirs, blocked, modules = json.loads(sys.argv[1])
sys.path[:] = [wheel_dir, *sys.path, *site_dirs]


class DevOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (dev-only)", name=name)
        return None


sys.meta_path.insert(0, DevOnly())
failed, outside = {}, []
for module in modules:
    try:
        loaded = importlib.import_module(module)
    except BaseException:
        failed[module] = traceback.format_exc(limit=-3)
        continue
    if not loaded.__file__.startswith(wheel_dir):
        outside.append(loaded.__file__)
print(json.dumps({"failed": failed, "outside": outside}))
"""


def test_the_wheel_holds_the_product_alone_and_imports_on_its_dependencies(tmp_path):
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "unpacked")
    dist_info = next(name.split("/")[0] for name in names if ".dist-info/" in name)
    assert dist_info.startswith(f"{PRODUCT}-")
    strays = [n for n in names if n.split("/")[0] not in (PRODUCT, dist_info)]
    assert not strays, f"the wheel holds more than the product: {strays}"
    shipped = {n for n in names if n.startswith(f"{PRODUCT}/") and n.endswith(".py")}
    product = {p.relative_to(ROOT).as_posix() for p in (ROOT / PRODUCT).rglob("*.py")}
    assert shipped == product

    modules = sorted(
        name[: -len(".py")].removesuffix("/__init__").replace("/", ".") for name in shipped
    )
    blocked = sorted(dev_only_modules())
    assert {"dnslib", "trustme", "uvloop", "webdataset", "pytest", *CHECKOUT_ONLY} <= set(blocked)
    site_dirs = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    spec = json.dumps([str(tmp_path / "unpacked"), site_dirs, blocked, modules])
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", IMPORT_ALL, spec],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert not report["failed"], "\n".join(f"{m}:\n{tb}" for m, tb in report["failed"].items())
    assert not report["outside"], report["outside"]
