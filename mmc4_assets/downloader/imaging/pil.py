"""The image library: Pillow-SIMD or plain Pillow, whichever ``PIL`` is installed.

Both are the ``PIL`` package with one API; the code never depends on the fork. Pillow-SIMD (what
``make env`` and the Dockerfile install: the ``simd`` extra) resamples with SSE4/AVX2; plain
Pillow (the ``pillow`` extra) is the fallback, with the same outcomes. Pillow-SIMD built against
Debian's libraries has no AVIF decoder: ``avif_support`` registers pillow-avif-plugin's then,
so AVIF images open either way. Import ``Image`` from here, not from ``PIL``, where images are
opened.
"""

from __future__ import annotations

import re
import warnings

import PIL
from PIL import Image, features

__all__ = ["Image", "avif_support", "flavour"]


def _has_avif() -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # releases without the feature warn that it is unknown
        try:
            return bool(features.check("avif"))
        except ValueError:
            return False


_avif_from: str | None | bool = False  # False: not looked at yet


def avif_support() -> str | None:
    """Where AVIF decoding comes from: ``"PIL"``, ``"pillow-avif-plugin"``, or None.

    The plugin is registered the first time this is asked, when an ISO media body (``ftyp``)
    arrives, not at import: its libraries cost every fetch process ~2 MB of RSS, and AVIF
    bodies are rare.
    """
    global _avif_from
    if _avif_from is False:
        _avif_from = "PIL" if _has_avif() else None
        if _avif_from is None:
            try:
                import pillow_avif  # noqa: F401 - registers the AVIF plugin with PIL.Image

                _avif_from = "pillow-avif-plugin"
            except ImportError:  # the fallback without the plugin: AVIF bodies are not_image
                pass
    return _avif_from


def flavour() -> str:
    """``"pillow-simd"`` or ``"pillow"``: the distribution of the ``PIL`` actually imported.

    Pillow-SIMD's versions are Pillow's with a ``.postN`` suffix (``12.1.1.post0``).
    """
    return "pillow-simd" if re.search(r"\.post\d+$", PIL.__version__) else "pillow"
