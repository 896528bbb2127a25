"""Safe file names for downloaded images.

Image names come from the corpus, that is from the web: a name that could leave the shard folder,
hide itself, clash with another image of the shard or upset a file system is replaced by a name
derived from the URL. Allocation is deterministic in shard order, so a rerun maps every image to
the same file.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

MAX_NAME_LENGTH = 128
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SAFE_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,5}")
DEFAULT_EXTENSION = ".jpg"


def is_safe_name(name: str) -> bool:
    """A plain, short, visible file name made of [A-Za-z0-9._-], not starting with a dot."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_NAME_LENGTH
        and _SAFE_NAME.fullmatch(name) is not None
        and ".." not in name
    )


def _extension(name: str, url: str) -> str:
    """A harmless extension: the given name's, else the URL path's, else .jpg."""
    for candidate in (name, _url_path(url)):
        suffix = PurePosixPath(candidate.replace("\\", "/")).suffix if candidate else ""
        if _SAFE_EXTENSION.fullmatch(suffix):
            return suffix.lower()
    return DEFAULT_EXTENSION


def _url_path(url: str) -> str:
    try:
        return urlsplit(url).path
    except ValueError:
        return ""


def derived_name(url: str, name: str = "", salt: str = "") -> str:
    """sha1 of the URL (plus ``salt`` to break clashes) with a sensible extension."""
    digest = hashlib.sha1(f"{url}{salt}".encode("utf-8", "surrogatepass")).hexdigest()
    return digest + _extension(name, url)


class NameAllocator:
    """Hands out one distinct safe name per image of a shard, in shard order."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def allocate(self, name: str, url: str, doc: int, index: int) -> str:
        candidates = [name] if is_safe_name(name) else []
        candidates += [derived_name(url, name), derived_name(url, name, f"#{doc}.{index}")]
        for candidate in candidates:
            if candidate.lower() not in self._taken:
                break
        else:  # pragma: no cover - needs a sha1 collision
            raise RuntimeError(f"no free name for image {doc}.{index}")
        self._taken.add(candidate.lower())
        return candidate


def contained_path(folder: Path, name: str) -> Path:
    """``folder/name``, refusing anything that would resolve outside ``folder``."""
    root = Path(os.path.realpath(folder))
    target = Path(os.path.realpath(root / name))
    if target.parent != root:
        raise ValueError(f"image name {name!r} escapes {folder}")
    return target
