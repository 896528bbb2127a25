"""What a body is, by its first bytes: the common image signatures first, libmagic for the rest.

Nearly every body is a JPEG, PNG, GIF or WebP, which four byte comparisons recognise; libmagic
(a shared, locked handle: its handles are not thread-safe and each maps the whole database)
only sees the rest, such as HTML error pages served as images.
"""

from __future__ import annotations

import queue

import magic

_SNIFF_BYTES = 8192
_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
_sniffers: queue.SimpleQueue = queue.SimpleQueue()


def sniff_mimetype(data: bytes) -> str:
    """The MIME type of ``data``."""
    for signature, mimetype in _SIGNATURES:
        if data.startswith(signature):
            return mimetype
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return libmagic_mimetype(data)


def libmagic_mimetype(data: bytes) -> str:
    """libmagic's MIME type of ``data`` (one handle per concurrent caller, reused)."""
    try:
        sniffer = _sniffers.get_nowait()
    except queue.Empty:
        sniffer = magic.Magic(mime=True)
    try:
        return sniffer.from_buffer(data[:_SNIFF_BYTES])
    finally:
        _sniffers.put(sniffer)
