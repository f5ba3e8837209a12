"""Image container from its leading bytes (magic numbers), so "not an image" is told apart from
"an image Pillow cannot read", and an image part gets the right MIME type."""
from __future__ import annotations

_MAGIC: list[tuple[bytes, str]] = [
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "BigTIFF"), (b"MM\x00+", "BigTIFF"),
    (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"8BPS", "PSD"), (b"BM", "BMP"), (b"\x00\x00\x01\x00", "ICO"), (b"qoif", "QOI"),
    (b"FUJIFILMCCD-RAW", "Fujifilm RAF"), (b"IIRO", "Olympus ORF"), (b"IIU\x00", "Panasonic RW2"),
]
# ISO base media files (HEIF family, CR3) say what they are in the `ftyp` box's major brand.
_FTYP_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"hevc": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF",
                b"avif": "AVIF", b"avis": "AVIF", b"crx ": "Canon CR3"}
# The formats an OpenAI-compatible server takes as a base64 image part.
_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "BMP": "image/bmp", "TIFF": "image/tiff",
         "WEBP": "image/webp"}


def sniff_format(data: bytes) -> str | None:
    """Name of the image container the leading bytes announce ("JPEG", "PNG", "HEIC", ...), or None."""
    if data[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(data[8:12], None)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    return None


def mime_type(data: bytes) -> str | None:
    """`image/jpeg`, `image/png`, ... for the formats in an image part; None for any other bytes."""
    return _MIME.get(sniff_format(data) or "")
