"""Image-to-sentence reassignment, reproducing mmc4's `compute_assignments.py` choice exactly.

The rule (docs/contracts.md, "The reassignment rule"): solve a linear assignment with `lapjv`
on the negated similarity matrix padded to square with the constant 1000; images left without a
sentence (more images than sentences) take their argmax sentence. `lapjv` is always called,
never another solver or a shortcut: it works in float32 and breaks ties its own way, and real
documents have ties.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from lapjv import lapjv

from mmc4_assets.corpus.atomic import atomic_write

PADDING_COST = 1000.0
"""The reference's dummy cost; part of the rule, since it shifts lapjv's float32 sums."""

UNCHANGED_REASONS = ("no_images", "no_sentences", "nan_similarity", "bad_shape", "bad_line")
MAX_REPORTED_PROBLEMS = 50


def assign_images(similarity: np.ndarray) -> np.ndarray:
    """Return, for each image (row), the index of the sentence (column) it is assigned to."""
    sim = np.asarray(similarity)
    n_images, n_sentences = sim.shape
    size = max(n_images, n_sentences)
    cost = np.empty((size, size))
    np.negative(sim, out=cost[:n_images, :n_sentences])
    cost[n_images:] = PADDING_COST
    cost[:n_images, n_sentences:] = PADDING_COST
    row_to_column = lapjv(cost)[0][:n_images].astype(np.int64)
    if n_images > n_sentences:
        # Only here can an image land on a padding column: it takes its best sentence instead.
        on_padding = row_to_column >= n_sentences
        row_to_column[on_padding] = np.argmax(sim[on_padding], axis=1)
    return row_to_column


@dataclass
class ReassignStats:
    """What one shard's reassignment did, for asset metadata."""

    documents: int = 0
    images: int = 0
    changed: int = 0
    unchanged: dict[str, int] = field(default_factory=lambda: dict.fromkeys(UNCHANGED_REASONS, 0))


def similarity_of(doc: object) -> tuple[str | None, np.ndarray | None]:
    """Return (reason the document cannot be assigned, or None; its similarity matrix).

    Matrices are built the way the reference builds them (`np.array` on the JSON lists).
    Reasons: `bad_line` (not an object, or text_list / image_info / similarity_matrix missing or
    not lists, or an image_info entry that is not an object), `no_images`, `no_sentences`,
    `bad_shape` (not a numeric n_images x n_sentences matrix), `nan_similarity` (NaN or infinity).
    """
    if not isinstance(doc, dict):
        return "bad_line", None
    images, sentences, rows = (
        doc.get("image_info"),
        doc.get("text_list"),
        doc.get("similarity_matrix"),
    )
    if not (type(images) is list and type(sentences) is list and type(rows) is list):
        return "bad_line", None
    for entry in images:
        if type(entry) is not dict:
            return "bad_line", None
    if not images:
        return "no_images", None
    if not sentences:
        return "no_sentences", None
    try:
        sim = np.array(rows)
    except (ValueError, TypeError, OverflowError):
        return "bad_shape", None
    if sim.dtype.kind not in "iuf" or sim.shape != (len(images), len(sentences)):
        return "bad_shape", None
    # A finite sum proves every element finite; only otherwise look element by element.
    if sim.dtype.kind == "f" and not math.isfinite(sim.sum()) and not np.isfinite(sim).all():
        return "nan_similarity", None
    return None, sim


def _assignment(doc: object) -> tuple[str | None, list[int], list[float]]:
    """(reason unchanged or None, matched_text_index per image, matched_sim per image)."""
    reason, sim = similarity_of(doc)
    if reason is not None:
        return reason, [], []
    indexes = assign_images(sim).tolist()
    rows = doc["similarity_matrix"]
    # float() of the JSON number is exactly float(np.array(rows)[i, j]), as the reference writes.
    sims = [float(rows[i][j]) for i, j in enumerate(indexes)]
    return None, indexes, sims


def _count_changed(images: list[dict], indexes: list[int]) -> int:
    pairs = zip(images, indexes, strict=True)
    return sum(image.get("matched_text_index") != index for image, index in pairs)


def _already_written(images: list[dict], indexes: list[int], sims: list[float]) -> bool:
    """True when the line already holds exactly these values (same JSON types), so it can pass."""
    for image, index, sim in zip(images, indexes, sims, strict=True):
        old_index, old_sim = image.get("matched_text_index"), image.get("matched_sim")
        if type(old_index) is not int or old_index != index:
            return False
        if type(old_sim) is not float or old_sim != sim:
            return False
    return True


def _write_into(images: list[dict], indexes: list[int], sims: list[float]) -> None:
    for image, index, sim in zip(images, indexes, sims, strict=True):
        image["matched_text_index"] = index
        image["matched_sim"] = sim


def reassign_document(doc: dict) -> tuple[str | None, int]:
    """Recompute `matched_text_index` / `matched_sim` in place.

    Returns (reason the document was left unchanged, or None; number of images whose
    `matched_text_index` changed).
    """
    reason, indexes, sims = _assignment(doc)
    if reason is not None:
        return reason, 0
    changed = _count_changed(doc["image_info"], indexes)
    _write_into(doc["image_info"], indexes, sims)
    return None, changed


def _parse(line: bytes) -> tuple[object, bool]:
    """Parse a line with orjson, falling back to the stdlib for what orjson refuses.

    The fallback (NaN literals, integers beyond 64 bits, lone surrogates) is what the reference's
    `json.loads` would accept. Returns (document or None, parsed by the stdlib).
    """
    try:
        return orjson.loads(line), False
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(line), True
    except (ValueError, UnicodeDecodeError):
        return None, False


def _dumps(doc: dict, by_stdlib: bool) -> bytes:
    """One JSON line. orjson writes floats as the shortest text that reads back identical."""
    if by_stdlib:  # orjson refused it on reading, so it would refuse writing it too
        return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n"
    return orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE)


def _reassigned_lines(src: Path, stats: ReassignStats) -> Iterator[bytes]:
    """Yield the output line for each input line, updating ``stats``.

    Lines whose values do not change, and lines left unchanged for a reason, pass through byte
    for byte (line ending normalised to \\n).
    """
    unchanged = stats.unchanged
    with open(src, "rb") as handle:
        for line in handle:
            stats.documents += 1
            body = line.rstrip(b"\r\n")
            doc, by_stdlib = _parse(body)
            reason, indexes, sims = _assignment(doc)
            if reason is not None:
                unchanged[reason] += 1
                yield body + b"\n"
                continue
            images = doc["image_info"]
            stats.images += len(images)
            if _already_written(images, indexes, sims):
                yield body + b"\n"
                continue
            stats.changed += _count_changed(images, indexes)
            _write_into(images, indexes, sims)
            yield _dumps(doc, by_stdlib)


def reassign_shard(src: Path, dest: Path) -> ReassignStats:
    """Write ``dest``: ``src`` line for line, with every assignable document reassigned.

    Line order and every other field are preserved; documents that cannot be assigned are
    copied unchanged and counted by reason. ``dest`` appears only once complete.
    """
    stats = ReassignStats()
    with atomic_write(dest, "wb") as out:
        out.writelines(_reassigned_lines(Path(src), stats))
    return stats


def _problems_in(doc: object) -> list[str]:
    """Assignment problems of one parsed document (empty for documents reassign skips)."""
    reason, _ = similarity_of(doc)
    if reason is not None:
        return []
    n_sentences = len(doc["text_list"])
    indexes = [image.get("matched_text_index") for image in doc["image_info"]]
    problems = [
        f"image {i} matched_text_index {index!r} is not in [0, {n_sentences})"
        for i, index in enumerate(indexes)
        if type(index) is not int or not 0 <= index < n_sentences
    ]
    if len(indexes) <= n_sentences:
        shared = sorted(i for i, n in Counter(map(repr, indexes)).items() if n > 1)
        problems += [f"several images share sentence {index}" for index in shared]
    return problems


def check_assignments(path: str | os.PathLike) -> list[str]:
    """List assignment problems in a reassigned shard; an empty list means it is fine.

    Checked: every `matched_text_index` is within the document's sentences, and no two images
    share a sentence when there are at least as many sentences as images. Documents reassign
    leaves unchanged are skipped (they are counted there). At most MAX_REPORTED_PROBLEMS are
    listed (lines numbered from 1), followed by a count of the rest.
    """
    problems: list[str] = []
    total = 0
    with open(path, "rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            doc, _ = _parse(line.rstrip(b"\r\n"))
            for problem in _problems_in(doc):
                total += 1
                if len(problems) < MAX_REPORTED_PROBLEMS:
                    problems.append(f"line {line_number}: {problem}")
    if total > len(problems):
        problems.append(f"... and {total - len(problems)} more problems")
    return problems
