"""Near-dup signature of a decoded image: content box (uniform borders trimmed), pHash and thumbnail of
that box, solid-colour class and an encoding-quality estimate; computed once, inside decode's pass."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

TRIM_SIDE = 512        # borders are found on a copy at most this long, then scaled back
FLAT_TOL = 48          # a line is flat when all but FLAT_OUTLIERS of its pixels lie within this of its median:
                       # strong ink only, so JPEG ringing (q30) and faint anti-aliasing do not move the box
FLAT_OUTLIERS = 0.002  # (a stray pixel or two: dust, noise)
MIN_BORDER = 0.01      # trimmed bands thinner than this fraction of a side are not counted as an added border
PHASH_SIDE = 32        # imagehash.phash's resize (hash_size 8 x highfreq_factor 4)
THUMB = 32             # thumbnail side: 32x32 gray = 1 KB, enough to tell text cards of one layout apart
LOSSLESS = ("PNG", "TIFF", "BMP", "PPM", "QOI", "TGA")

# libjpeg's standard luminance table (ITU-T T.81 Annex K), scaled by quality (jpeg_quality_scaling).
_STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)


@dataclass(frozen=True)
class Signature:
    phash: str                     # pHash of the content box (16 hex chars)
    thumb: bytes                   # THUMB x THUMB gray of the content box, row-major uint8
    box: tuple[int, int, int, int]  # content box (x0, y0, x1, y1) in the decoded image's pixels
    bordered: bool                 # uniform bands were trimmed (an added border, letterbox or margin)
    solid: str                     # "rrggbb" (4-bit steps) when the whole image is one flat colour, else ""
    quality: int                   # 100 lossless, JPEG quality estimated from its table, 75 other lossy


def _flat(lines: np.ndarray) -> np.ndarray:
    """Per line (lines x pixels x channels): all but FLAT_OUTLIERS of its pixels near the line's median colour.
    Judged per line, so a frame, the blended line JPEG leaves next to it and a margin all peel alike."""
    end = max(1, lines.shape[1] // 50)   # the ends cross a frame's blended corner: not judged
    inner = lines[:, end:-end] if lines.shape[1] > 4 * end else lines
    ranked = np.sort(inner[:, ::4], axis=1)   # every 4th pixel: the colour of a flat line
    k = ranked.shape[1]
    # twice the median (twice the middle value, or the sum of the two middle ones) against twice each pixel:
    # the same test as |pixel - median| > FLAT_TOL, in int16 (values <= 510), ~2x faster than np.median
    # and float differences
    med2 = ranked[:, (k - 1) // 2] + ranked[:, k // 2]
    d2 = np.abs(2 * inner - med2[:, None, :])
    far = np.maximum(np.maximum(d2[..., 0], d2[..., 1]), d2[..., 2])   # not .max(axis=-1): numpy's reduction
    return np.count_nonzero(far > 2 * FLAT_TOL, axis=1) / far.shape[1] <= FLAT_OUTLIERS   # over 3 is slower


def _lead(lines: Callable[[int, int], np.ndarray], n: int) -> int:
    """Number of leading flat lines among n, judged in growing chunks from the front (a photo stops at its first
    line, a framed image a chunk past its frame) instead of judging every line of the image. lines(i, j)
    gives lines i..j-1 from the front (lines x pixels x channels)."""
    i, step = 0, 2
    while i < n:
        flags = _flat(lines(i, min(n, i + step)))
        if not flags.all():
            return i + int(np.argmin(flags))
        i, step = i + step, step * 2
    return n


class _Reduced:
    """The image box-reduced by `factor` (Image.reduce), made strip by strip as the peel asks for lines: a photo
    needs only a few lines at each side, not the whole reduced copy. A strip of the reduced image is the
    reduce of the matching source box (blocks start at multiples of the factor, the last one clipped at the
    image's edge as in the whole reduce), so the pixels are the same as those of the whole copy."""

    def __init__(self, rgb: Image.Image, factor: int):
        self.rgb, self.f = rgb, factor
        self.w, self.h = (-(-rgb.width // factor), -(-rgb.height // factor)) if factor >= 2 else rgb.size

    def strip(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        f, (w, h) = self.f, self.rgb.size
        if f >= 2:
            part = self.rgb.reduce(f, (x0 * f, y0 * f, min(w, x1 * f), min(h, y1 * f)))
        else:
            part = self.rgb.crop((x0, y0, x1, y1))
        return np.asarray(part, dtype=np.int16)

    def lines(self, box: tuple[int, int, int, int], side: str) -> Callable[[int, int], np.ndarray]:
        """The lines of `box` (x0, y0, x1, y1 in reduced pixels) counted from one side (top, bottom, left or
        right): lines(i, j) gives lines i..j-1 from that side as (lines x pixels x channels)."""
        x0, y0, x1, y1 = box
        if side == "top":
            return lambda i, j: self.strip(x0, y0 + i, x1, y0 + j)
        if side == "bottom":
            return lambda i, j: self.strip(x0, y1 - j, x1, y1 - i)[::-1]
        if side == "left":
            return lambda i, j: np.ascontiguousarray(self.strip(x0 + i, y0, x0 + j, y1).transpose(1, 0, 2))
        return lambda i, j: np.ascontiguousarray(self.strip(x1 - j, y0, x1 - i, y1).transpose(1, 0, 2)[::-1])


def content_box(rgb: Image.Image) -> tuple[tuple[int, int, int, int], bool] | None:
    """(box, bordered) after peeling flat rows and columns from every side; None when everything is flat."""
    small = _Reduced(rgb, -(-max(rgb.size) // TRIM_SIDE))   # integer box reduction: ~4x cheaper than a resize
    w, h = small.w, small.h
    y0, y1, x0, x1 = 0, h, 0, w
    for _ in range(3):   # rows judged on the columns that remain, then columns on the rows that remain
        top = _lead(small.lines((x0, y0, x1, y1), "top"), y1 - y0)
        if top == y1 - y0:
            return None
        y0 += top
        y1 -= _lead(small.lines((x0, y0, x1, y1), "bottom"), y1 - y0)
        dx0 = _lead(small.lines((x0, y0, x1, y1), "left"), x1 - x0)
        if dx0 == x1 - x0:
            return None
        x0 += dx0
        dx1 = _lead(small.lines((x0, y0, x1, y1), "right"), x1 - x0)
        x1 -= dx1
        if not (dx0 or dx1):
            break
    sx, sy = rgb.width / w, rgb.height / h
    box = (round(x0 * sx), round(y0 * sy), max(round(x0 * sx) + 1, round(x1 * sx)),
           max(round(y0 * sy) + 1, round(y1 * sy)))
    bordered = max(y0, h - y1) > MIN_BORDER * h or max(x0, w - x1) > MIN_BORDER * w
    return box, bordered


def jpeg_quality(im: Image.Image) -> int:
    """Estimated quality of a decoded JPEG from its luminance quantization table (inverse libjpeg scaling)."""
    tables = getattr(im, "quantization", None) or {}
    if 0 not in tables:
        return 75
    q = np.asarray(tables[0], dtype=np.float64)
    if q.size != 64:
        return 75
    # libjpeg: table = (std * scale + 50) / 100, scale = 5000/Q (Q < 50) or 200 - 2Q; take the mean ratio
    scale = float(np.clip(q * 100.0 / _STD_LUMA, 1, 5000).mean())
    quality = 5000.0 / scale if scale > 100 else (200.0 - scale) / 2.0
    return int(np.clip(round(quality), 1, 100))


def encoding_quality(im: Image.Image) -> int:
    if im.format in LOSSLESS:
        return 100
    return jpeg_quality(im) if im.format in ("JPEG", "MPO") else 75


def thumbnail(crop: Image.Image) -> bytes:
    return crop.convert("L").resize((THUMB, THUMB), Image.Resampling.BOX).tobytes()


def hash_and_thumb(gray: Image.Image, known: str | None = None) -> tuple[str, bytes]:
    """imagehash.phash and the THUMB x THUMB box thumbnail of a gray image, both from a copy box-reduced to
    >= 128 px on the short side (imagehash's 32x32 LANCZOS resize costs ~10 ms on a full photo; the hash of
    the reduced copy differs from it by a bit or two at most, and every image goes the same way). `known`:
    imagehash.phash of `gray` itself, when the caller has it (used when there is nothing to reduce)."""
    factor = min(gray.size) // 128
    g = gray.reduce(factor) if factor >= 2 else gray
    phash = known if known is not None and g is gray else lanczos_phash(g)
    return phash, g.resize((THUMB, THUMB), Image.Resampling.BOX).tobytes()


def lanczos_phash(gray: Image.Image) -> str:
    """imagehash.phash of a gray image (hex), computed on its 32x32 LANCZOS copy: imagehash's own convert("L") and
    resize of that copy are copies, so the hash is the same, without its copy of the whole image."""
    import imagehash

    return str(imagehash.phash(gray.resize((PHASH_SIDE, PHASH_SIDE), Image.Resampling.LANCZOS)))


def signature(rgb: Image.Image, quality: int, gray: Image.Image | None = None,
              gray_phash: str | None = None) -> Signature:
    """The near-dup signature of a decoded RGB image: borders found on a <= TRIM_SIDE copy, pHash and
    thumbnail of the content box cut from the full image (so that two copies of one picture at different
    sizes or with different borders give the same crop up to a pixel of the original). `gray`: the image's
    convert("L") when the caller has it (the crop of it is the crop's own convert, pixel for pixel), and
    `gray_phash` its imagehash.phash."""
    found = content_box(rgb)
    if found is None:
        small = rgb.reduce(max(1, max(rgb.size) // 64))
        r, g, b = (int(v) >> 4 for v in np.asarray(small, dtype=np.float64).reshape(-1, 3).mean(axis=0))
        box, bordered, solid = (0, 0, rgb.width, rgb.height), False, f"{r:x}{r:x}{g:x}{g:x}{b:x}{b:x}"
    else:
        (box, bordered), solid = found, ""
    whole = box == (0, 0, rgb.width, rgb.height)
    if gray is None:
        gray = (rgb if whole else rgb.crop(box)).convert("L")
    elif not whole:
        gray = gray.crop(box)
    phash, thumb = hash_and_thumb(gray, gray_phash if whole else None)
    return Signature(phash=phash, thumb=thumb, box=box, bordered=bordered, solid=solid, quality=quality)


def phash_and_signature(rgb: Image.Image, quality: int) -> tuple[str, Signature]:
    """imagehash.phash of the whole image (hex) and its signature from one gray conversion: imagehash converts
    to "L" and LANCZOS-resizes to 32x32 itself, so the hash of that 32x32 copy is the same hash (its own
    convert and resize of a 32x32 "L" image are copies), and the signature crops the same gray (and takes the
    same hash for the content box when the box is the whole image and too small to reduce)."""
    gray = rgb.convert("L")
    whole = lanczos_phash(gray)
    return whole, signature(rgb, quality, gray, whole)
