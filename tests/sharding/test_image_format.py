"""The one image-format sniffer: containers by magic bytes, MIME types only for what an image part takes."""
from __future__ import annotations

import io

from PIL import Image

from polycap.sharding.image_format import mime_type, sniff_format
from tests.conftest import jpeg_bytes


def _encode(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, fmt)
    return buf.getvalue()


def test_containers_by_magic_bytes():
    assert sniff_format(jpeg_bytes()) == "JPEG"
    for fmt in ("PNG", "GIF", "BMP", "TIFF", "WEBP"):
        assert sniff_format(_encode(fmt)) == fmt
    assert sniff_format(b"\x00\x00\x00\x1cftypavif") == "AVIF"
    assert sniff_format(b"\x00\x00\x00\x1cftypisom") is None   # an MP4 is not an image
    assert sniff_format(b"MM\x00+" + bytes(12)) == "BigTIFF"
    assert sniff_format(b"hello") is None and sniff_format(b"") is None


def test_mime_types():
    assert mime_type(jpeg_bytes()) == "image/jpeg" and mime_type(_encode("WEBP")) == "image/webp"
    assert mime_type(_encode("TIFF")) == "image/tiff"
    assert mime_type(b"\x00\x00\x00\x1cftypheic") is None      # HEIC: a container, not an image part
    assert mime_type(b"<html>") is None
