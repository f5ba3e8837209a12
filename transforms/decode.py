"""Decode and validate images once: bomb guard, EXIF transpose, RGB, optional resize, JPEG re-encode, pHash and
the near-dup signature (transforms/signature.py) from the same decoded pixels."""
from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, cast

import apache_beam as beam
from PIL import Image, ImageFile, UnidentifiedImageError

from polycap.schemas import Hashes, ImageInfo, Reason, Reject, Sample
from polycap.schemas.config import DecodeConfig
from polycap.sharding.image_format import sniff_format
from polycap.sharding.staging import stage_bytes
from polycap.transforms.plumbing import auto_threads, make_reject, route_stage, stage_dofn
from polycap.transforms.signature import Signature, encoding_quality, phash_and_signature

STAGE = "decode"

# Words in Pillow's error messages that mean "valid container, variant not supported", not damage.
_UNSUPPORTED_HINTS = ("unknown pixel mode", "not supported", "unsupported", "not available",
                      "unknown compression", "unknown raw mode", "cannot handle")
# EXIF orientation -> Pillow transpose op (EXIF 2.32, tag 0x0112), as in PIL.ImageOps.exif_transpose.
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
_EXIF_ORIENTATION_TAG = 0x0112


class DecodeFailure(Exception):
    """An expected decode failure: becomes a Reject with this reason and detail."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# Bytes per pixel of Pillow's modes as loaded (anything unlisted counts 4).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "I;16": 2, "I;16B": 2, "I;16L": 2,
               "I;16N": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3}


def decode_cost(im: Image.Image, size: tuple[int, int] | None = None) -> int:
    """Peak bytes one decode holds, from the header: the loaded frame (`size` when libjpeg scales it down)
    plus the 8-bit gray/RGB(A) working copies of to_rgb and the resize."""
    w, h = size or im.size
    return w * h * (_MODE_BYTES.get(im.mode, 4) + 4)


class MemoryBudget:
    """Admits decodes while the bytes they hold stay within `limit`; a decode waits for others to finish.
    One decode larger than the whole budget is admitted alone (the max_pixels bomb limit bounds it), so
    nothing waits forever. One budget per worker process and limit, shared by its decode threads."""

    _shared: dict[int, MemoryBudget] = {}
    _shared_lock = threading.Lock()

    def __init__(self, limit: int):
        self.limit, self.used, self.cond = limit, 0, threading.Condition()

    @classmethod
    def for_limit(cls, limit: int) -> MemoryBudget:
        with cls._shared_lock:
            return cls._shared.setdefault(limit, cls(limit))

    @contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        with self.cond:
            self.cond.wait_for(lambda: self.used == 0 or self.used + cost <= self.limit)
            self.used += cost
        try:
            yield
        finally:
            with self.cond:
                self.used -= cost
                self.cond.notify_all()


@dataclass(frozen=True)
class Decoded:
    data: bytes                     # stored encoding (normalized JPEG, or the input bytes kept as-is)
    format: str                     # of `data`, lower case ("jpeg")
    width: int
    height: int
    orig_format: str                # Pillow's name for the input container ("JPEG", "PNG", ...)
    orig_width: int
    orig_height: int
    phash: str
    info: dict[str, Any] = field(default_factory=dict)   # -> provenance["decode"]
    sig: Signature | None = None    # near-dup signature; `box` in the pixels of the decoded image


def describe_non_image(data: bytes) -> str:
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "HTML document"
    if head.startswith(b"%pdf"):
        return "PDF document"
    if head.startswith((b"<?xml", b"<svg")):
        return "XML/SVG document (vector images are not rasterized)"
    if data.startswith(b"PK\x03\x04"):
        return "ZIP archive"
    try:
        data[:512].decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return f"unknown binary (starts {data[:8].hex()})"


def _plugin_error(data: bytes) -> str:
    """Pillow's own message from the plugins that accept these bytes (Image.open hides it)."""
    Image.init()
    msgs = []
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        if accept is None or not accept(data[:16]):
            continue
        try:
            factory(io.BytesIO(data), "")  # type: ignore[call-arg]
        except Exception as e:  # noqa: BLE001 - we only want the message
            if str(e) not in msgs:
                msgs.append(str(e))
    return "; ".join(msgs)


def _classify(msg: str) -> Reason:
    low = msg.lower()
    return Reason.UNSUPPORTED_FORMAT if any(h in low for h in _UNSUPPORTED_HINTS) else Reason.CORRUPT_IMAGE


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only (no pixels yet) and apply the bomb limit to the declared size."""
    if not data:
        raise DecodeFailure(Reason.EMPTY_FILE, "0 bytes")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone switched Pillow to pad truncated files with grey; that would hide data loss.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on; refusing to decode")
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise DecodeFailure(Reason.DECOMPRESSION_BOMB, str(e)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        kind = sniff_format(data)
        if kind is None:
            raise DecodeFailure(Reason.NOT_AN_IMAGE, f"{describe_non_image(data)}, {len(data)} bytes") from None
        why = _plugin_error(data)
        if not why:   # an image container, but no installed Pillow plugin accepts it (JPEG XL, HEIC...)
            raise DecodeFailure(Reason.UNSUPPORTED_FORMAT, f"{kind}: no Pillow decoder installed") from None
        raise DecodeFailure(_classify(why), f"{kind}: {why}"[:500]) from None
    w, h = im.size
    # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; we reject at the warning level
    # (or lower, from config), from the header, before any pixel is decompressed.
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    if w * h > limit:
        raise DecodeFailure(Reason.DECOMPRESSION_BOMB, f"{w}x{h} = {w * h} pixels > limit {limit}")
    if w <= 0 or h <= 0:
        raise DecodeFailure(Reason.CORRUPT_IMAGE, f"{im.format}: declared size {w}x{h}")
    return im


def target_size(w: int, h: int, max_side: int) -> tuple[int, int]:
    """(w, h) scaled so the longer side is at most max_side (0 = unchanged), aspect kept."""
    if max_side <= 0 or max(w, h) <= max_side:
        return w, h
    s = max_side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


# libjpeg warnings that mean entropy-coded data is missing or damaged: libjpeg fills what it could not
# decode with grey (or blur, for progressive files) and Pillow reports nothing, so a JPEG cut short and
# given a new end-of-image marker would be kept. Other warnings (extraneous bytes before a marker, odd
# SOS parameters) leave every pixel decoded and are recorded, not rejected.
_JPEG_DATA_LOST = ("premature end", "bad huffman", "instead of rst", "corrupt jpeg data: found marker")


def jpeg_scaled_size(im: Image.Image, size: tuple[int, int]) -> tuple[int, int]:
    """The size libjpeg decodes a JPEG at to keep `size` (Pillow's draft rule: the largest 1/2, 1/4 or 1/8
    scale that keeps it); other formats load whole."""
    if im.format != "JPEG" or size == im.size:
        return im.size
    w, h = im.size
    ratio = min(w // size[0], h // size[1])
    f = next(f for f in (8, 4, 2, 1) if ratio >= f)
    return -(-w // f), -(-h // f)


def _decode_jpeg(im: Image.Image, data: bytes, size: tuple[int, int], info: dict[str, Any]) -> Image.Image:
    """A YCbCr or gray JPEG decoded by libjpeg-turbo through simplejpeg, which reports libjpeg's warnings
    (pixel-identical to Pillow's decode on the eval photos, 1.2-2.7x faster, and it releases the GIL);
    decoded at the DCT scale Pillow's draft would pick for `size`."""
    import simplejpeg

    gray = im.mode == "L"
    kw: dict[str, Any] = {"colorspace": "GRAY" if gray else "RGB"}
    if size != im.size:
        kw.update(zip(("min_width", "min_height"), jpeg_scaled_size(im, size)))
    try:
        arr = simplejpeg.decode_jpeg(data, strict=True, **kw)
    except ValueError as e:
        msg = str(e)
        if any(w in msg.lower() for w in _JPEG_DATA_LOST):
            raise DecodeFailure(Reason.CORRUPT_IMAGE, f"JPEG truncated or damaged: {msg}"[:500]) from None
        if "corrupt jpeg data" not in msg.lower() and "warning" not in msg.lower():
            raise DecodeFailure(_classify(msg), f"JPEG: {msg}"[:500]) from None
        info["jpeg_warning"] = msg[:200]
        arr = simplejpeg.decode_jpeg(data, strict=False, **kw)
    out = Image.fromarray(arr[:, :, 0] if gray else arr, "L" if gray else "RGB")
    if out.size != im.size:
        info["draft"] = list(out.size)
    return out


def fit(im: Image.Image, max_side: int) -> Image.Image:
    """`im` downscaled (Lanczos) so its longer side is at most max_side; unchanged when it already fits."""
    size = target_size(*im.size, max_side)
    return im if size == im.size else im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def load_pixels(im: Image.Image, data: bytes, max_side: int) -> tuple[Image.Image, dict[str, Any]]:
    """The first frame's pixels. A JPEG goes through _decode_jpeg (scaled in the DCT when it will be
    downscaled); anything else through Pillow. Returns (image, provenance info)."""
    info: dict[str, Any] = {}
    tw, th = target_size(*im.size, max_side)
    if im.format == "JPEG" and im.mode in ("RGB", "L"):
        info["frames"] = 1
        return _decode_jpeg(im, data, (tw, th), info), info
    try:
        info["frames"] = int(getattr(im, "n_frames", 1) or 1)   # GIF/TIFF: walks the frame headers
        im.seek(0)
        im.load()
    except Image.DecompressionBombError as e:
        raise DecodeFailure(Reason.DECOMPRESSION_BOMB, str(e)) from None
    except (OSError, SyntaxError, ValueError, IndexError, EOFError) as e:
        raise DecodeFailure(_classify(str(e)), f"{im.format}: {e}"[:500]) from None
    return im, info


def _scale_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float gray -> 8-bit L, scaling by bit depth (Pillow would clip at 255).
    Converted in bands of rows, so the working copies stay small whatever the image size."""
    import numpy as np

    lo, hi = (float(v) for v in cast("tuple[float, float]", im.getextrema()))   # one band: (min, max)
    if im.mode.startswith("I;16"):
        scale, offset = 1 / 257.0, 0.0
    elif im.mode == "F" and 0.0 <= lo and hi <= 1.0:
        scale, offset = 255.0, 0.0
    elif lo >= 0 and hi <= 255:       # "I" or out-of-range float: 8/16-bit ranges as such, else min..max
        scale, offset = 1.0, 0.0
    elif lo >= 0 and hi <= 65535:
        scale, offset = 1 / 257.0, 0.0
    else:
        scale, offset = 255.0 / (hi - lo or 1.0), lo
    w, h = im.size
    out = np.empty((h, w), np.uint8)
    band = max(1, (1 << 20) // max(1, w))                      # about a million pixels at a time
    for top in range(0, h, band):
        rows = np.asarray(im.crop((0, top, w, min(h, top + band)))).astype(np.float64)
        out[top:top + band] = np.clip(np.rint((rows - offset) * scale), 0, 255)
    return Image.fromarray(out, "L")


def to_rgb(im: Image.Image) -> tuple[Image.Image, str | None]:
    """RGB version of any Pillow mode; alpha is composited on white. Returns (image, converted_from)."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im, None
    try:
        if mode.startswith("I") or mode == "F":
            return _scale_to_l(im).convert("RGB"), mode
        if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
            rgba = im.convert("RGBA")
            out = Image.new("RGB", im.size, (255, 255, 255))
            out.paste(rgba, mask=rgba.getchannel("A"))
            return out, mode
        return im.convert("RGB"), mode
    except ValueError as e:
        raise DecodeFailure(Reason.UNSUPPORTED_FORMAT, f"mode {mode}: {e}") from None


def exif_orientation(im: Image.Image) -> int:
    """EXIF orientation 1..8 of the opened file (1 when absent, malformed, or the format has no EXIF)."""
    if im.format not in ("JPEG", "TIFF", "PNG", "WEBP", "MPO", "AVIF", "HEIF"):
        return 1   # skips a getexif() parse for formats that cannot carry it
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - malformed EXIF must not cost us a valid image
        return 1


def apply_orientation(im: Image.Image, orientation: int) -> tuple[Image.Image, int]:
    """Rotate/flip per the EXIF orientation; returns (image, orientation applied or 0)."""
    op = _ORIENTATION.get(orientation)
    return (im.transpose(op), orientation) if op is not None else (im, 0)


def encode_jpeg(im: Image.Image, quality: int) -> bytes:
    # Pillow holds the GIL while it encodes (~0.8 ms a 0.3-MP image), unlike decode and resize. simplejpeg (used
    # for decoding, see _decode_jpeg)
    # (libjpeg-turbo, releases the GIL) was measured here: ~3 % faster end to end on the URL bench, 1.3 dB
    # lower PSNR at the same quality and size, and one more dependency -- not taken.
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def phash_hex(img: Image.Image) -> str:
    """64-bit perceptual hash (imagehash.phash: 32x32 gray, DCT, 8x8 low band vs median), 16 hex chars."""
    import imagehash

    return str(imagehash.phash(img))


def decode_bytes(data: bytes, cfg: DecodeConfig) -> Decoded:
    """The one decode of the CPU chain. Raises DecodeFailure for expected rejects."""
    im = open_image(data, cfg.max_pixels)
    budget = MemoryBudget.for_limit(cfg.memory_mb * 1024 * 1024)
    with budget.hold(decode_cost(im, jpeg_scaled_size(im, target_size(*im.size, cfg.max_side)))):
        return _decode_opened(im, data, cfg)


def _decode_opened(im: Image.Image, data: bytes, cfg: DecodeConfig) -> Decoded:
    orig_format, (ow, oh), orig_mode = im.format or "", im.size, im.mode
    info: dict[str, Any] = {"input_bytes": len(data), "orig_mode": orig_mode}
    pixels, loaded = load_pixels(im, data, cfg.max_side)
    info.update(loaded)
    converted_from: str | None
    if (pixels.mode in ("L", "I", "F") or pixels.mode.startswith("I;16")) and "transparency" not in pixels.info:
        # gray: 8-bit and downscaled before it becomes RGB, so the big working copy is 1 byte a pixel
        gray = fit(pixels if pixels.mode == "L" else _scale_to_l(pixels), cfg.max_side)
        rgb, converted_from = gray.convert("RGB"), pixels.mode
    else:
        rgb, converted_from = to_rgb(pixels)
    rgb, orientation = apply_orientation(rgb, exif_orientation(im))
    rgb = fit(rgb, cfg.max_side)
    if rgb.size != (ow, oh) and rgb.size != (oh, ow):
        info["resized"] = list(rgb.size)
    info.update(transposed=orientation, converted_from=converted_from)
    phash, sig = phash_and_signature(rgb, encoding_quality(im))   # one gray copy for both (same values)
    untouched = (not orientation and converted_from is None and "resized" not in info
                 and "draft" not in info and info["frames"] == 1
                 and orig_format == "JPEG")  # shards store `.jpg` members
    if cfg.reencode or not untouched:
        out, fmt = encode_jpeg(rgb, cfg.jpeg_quality), "jpeg"
        info.update(reencoded=True, jpeg_quality=cfg.jpeg_quality)
    else:
        out, fmt = data, orig_format.lower()
        info["reencoded"] = False
    return Decoded(data=out, format=fmt, width=rgb.width, height=rgb.height, orig_format=orig_format,
                   orig_width=ow, orig_height=oh, phash=phash, info=info, sig=sig)


def signature_hashes(sha256: str, d: Decoded) -> Hashes:
    """The record's hashes: the whole-image pHash and the signature, its box scaled to original pixels."""
    if d.sig is None:
        return Hashes(sha256=sha256, phash=d.phash)
    sig = d.sig
    # the original as decoded and turned upright (an EXIF 5..8 rotation swaps its sides)
    ow, oh = (d.orig_height, d.orig_width) if d.info.get("transposed", 0) >= 5 else (d.orig_width, d.orig_height)
    sx, sy = ow / d.width, oh / d.height
    box = [round(sig.box[0] * sx), round(sig.box[1] * sy), round(sig.box[2] * sx), round(sig.box[3] * sy)]
    return Hashes(sha256=sha256, phash=d.phash, content_phash=sig.phash, content_box=box,
                  thumb=base64.b64encode(sig.thumb).decode("ascii"), bordered=sig.bordered, solid=sig.solid,
                  quality=sig.quality)


def decode_sample(sample: Sample, cfg: DecodeConfig) -> Sample | Reject:
    try:
        d = decode_bytes(sample.image.bytes, cfg)
    except DecodeFailure as f:
        return make_reject(sample, STAGE, f.reason, f.detail)
    image = ImageInfo(bytes=d.data, format=d.format, width=d.width, height=d.height,
                      orig_format=d.orig_format, orig_width=d.orig_width, orig_height=d.orig_height)
    hashes = signature_hashes(sample.hashes.sha256, d)
    return replace(sample, image=image, hashes=hashes, provenance={**sample.provenance, STAGE: d.info})


def decode_and_stage(sample: Sample, cfg: DecodeConfig, stage_root: str | None) -> Sample | Reject:
    """Decode, then (with `stage_root`) move the bytes out of the record: both in the same pool thread."""
    out = decode_sample(sample, cfg)
    return stage_bytes(out, stage_root) if stage_root and isinstance(out, Sample) else out


class DecodeImages(beam.PTransform):
    """Samples with raw bytes -> (decoded Samples, Rejects of stage "decode").

    `cfg.threads` pool threads decode in parallel (Pillow releases the GIL while it decodes, resizes and
    encodes). With `stage_root` the decoded bytes are written to the staging folder in the same thread
    (sharding/staging.py), so image bytes never sit in a materialized PCollection."""

    def __init__(self, cfg: DecodeConfig, stage_root: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.stage_root = stage_root

    def expand(self, pcoll):
        fn = partial(decode_and_stage, cfg=self.cfg, stage_root=self.stage_root)
        return route_stage(pcoll, "DecodeOne", stage_dofn(fn, STAGE, auto_threads(self.cfg.threads)), STAGE)
