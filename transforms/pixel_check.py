"""Pixel check of a near-dup candidate pair: the fine detail of the two 32x32 gray content thumbnails
(transforms/signature.py) compared block by block at the best of a few crop alignments."""
from __future__ import annotations

import functools

import numpy as np

THUMB_SIDE = 32
# Pixel check: fine detail of the two 32x32 thumbnails compared block by block, at the best of a few
# alignments. Detail: a band-pass (Gaussian sigma 0.5 minus sigma 1.5, thumbnail pixels), which drops the
# low-frequency layout that text cards, pages and screenshots of one template share, and keeps strokes and
# texture while tolerating the sub-pixel shift of a crop. Alignments: identity and, either way round, a
# window of 97.5 % or 95 % of one thumbnail's side at 4 x 4 offsets resampled to the full side (what the
# thumbnail of a crop of up to ~10 % of the area looks like); the one with the highest global correlation
# of detail is judged. Blocks: 4 x 4
# pixels; those that carry detail (energy > BLOCK_ACTIVE x the mean block energy, in either image) are
# counted, and both BLOCK_TESTS must hold: most of them agree (correlation >= 0.6) and a good part agree
# closely (>= 0.8). A local overlay (watermark, logo) spoils a few blocks; another page or card of the
# same layout agrees loosely in many (its line structure) but closely in few. Tuned on the set
# bench/neardup_data.py builds: none of its 5230 distinct pairs within pHash 16 passes, even with both
# shares lowered by 0.04; 2 of its 448 original-variant pairs within pHash 10 fail (5 % crops of gravel and
# of the Hubble deep field; bench/results/neardup.json `pixel_check`). Known limit: pages whose lines all
# run the full width in one paragraph grid differ only below 32 x 32 (tests/transforms/test_neardup.py).
BAND_SIGMAS = (0.5, 1.5)
CROP_SCALES = (0.975, 0.95)
CROP_OFFSETS = 4
BLOCK_SIDE = 4
BLOCK_ACTIVE = 0.1
BLOCK_TESTS = ((0.6, 0.82), (0.8, 0.60))   # (min block correlation, min share of detail blocks)


def _blur_matrix(sigma: float, n: int = THUMB_SIDE) -> np.ndarray:
    """(n, n) Gaussian blur along one axis, edges repeated (scipy.ndimage's 'nearest', truncated at 4 sigma)."""
    r = int(4 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    m = np.zeros((n, n))
    for i, w in enumerate(k / k.sum()):
        np.add.at(m, (np.arange(n), np.clip(np.arange(n) + i - r, 0, n - 1)), w)
    return m


def _warp_matrix(scale: float, offset: float, n: int = THUMB_SIDE) -> np.ndarray:
    """(n, n) bilinear resampling along one axis of the part at `offset`, `scale` of the side, to the side."""
    u = np.clip(offset + (np.arange(n) + 0.5) * scale - 0.5, 0, n - 1)
    lo = np.floor(u).astype(np.intp)
    m = np.zeros((n, n))
    np.add.at(m, (np.arange(n), lo), 1 - (u - lo))
    np.add.at(m, (np.arange(n), np.minimum(lo + 1, n - 1)), u - lo)
    return m


def _alignments() -> list[tuple[float, float, float]]:
    out = [(1.0, 0.0, 0.0)]
    for s in CROP_SCALES:
        for ox in np.linspace(0, (1 - s) * THUMB_SIDE, CROP_OFFSETS):
            for oy in np.linspace(0, (1 - s) * THUMB_SIDE, CROP_OFFSETS):
                out.append((s, float(ox), float(oy)))
    return out


ALIGNMENTS = _alignments()
# band(warp(a)) = sum over the two blurs of +-(B W_y) a (B W_x)^T: every alignment's band-passed thumbnail
# comes from batched products (left, right: (2, alignments, side, side); the identity is alignment 0). The
# left factor depends only on (scale, oy): its distinct products with a thumbnail (9 of 33) are computed once
# and shared by the alignments that use them, the same products as the full batch, value for value.
_BLURS = [_blur_matrix(s) for s in BAND_SIGMAS]
_LEFT = np.stack([np.stack([g @ _warp_matrix(sc, oy) for sc, _, oy in ALIGNMENTS]) for g in _BLURS])
_RIGHT = np.stack([np.stack([(g @ _warp_matrix(sc, ox)).T for sc, ox, _ in ALIGNMENTS]) for g in _BLURS])
_LEFT_KEYS = list(dict.fromkeys((sc, oy) for sc, _, oy in ALIGNMENTS))
_LEFT_OF = np.array([_LEFT_KEYS.index((sc, oy)) for sc, _, oy in ALIGNMENTS])
_LEFT_DISTINCT = np.stack([np.stack([g @ _warp_matrix(sc, oy) for sc, oy in _LEFT_KEYS]) for g in _BLURS])


def band(a: np.ndarray) -> np.ndarray:
    """Band-pass detail of thumbnails (..., side, side): BAND_SIGMAS[0] blur minus BAND_SIGMAS[1] blur."""
    return _LEFT[0, 0] @ a @ _RIGHT[0, 0] - _LEFT[1, 0] @ a @ _RIGHT[1, 0]


def aligned_bands(a: np.ndarray, first: int = 0) -> np.ndarray:
    """(alignments, side, side): band(warp(a, *alignment)) for every ALIGNMENTS entry from `first` on."""
    la = _LEFT_DISTINCT @ a
    at = _LEFT_OF[first:]
    return la[0][at] @ _RIGHT[0, first:] - la[1][at] @ _RIGHT[1, first:]


def warp(a: np.ndarray, scale: float, ox: float, oy: float) -> np.ndarray:
    """The part of a thumbnail at offset (ox, oy), `scale` of its side, resampled to the full side
    (bilinear): what the thumbnail of that crop of the picture looks like."""
    return _warp_matrix(scale, oy, a.shape[-2]) @ a @ _warp_matrix(scale, ox, a.shape[-1]).T


def _ncc(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Correlation over the last axis."""
    x = x - x.mean(-1, keepdims=True)
    y = y - y.mean(-1, keepdims=True)
    return (x * y).sum(-1) / np.sqrt((x * x).sum(-1) * (y * y).sum(-1) + 1e-9)


def block_shares(x: np.ndarray, y: np.ndarray) -> list[float]:
    """Per BLOCK_TESTS entry: the share of the detail-carrying BLOCK_SIDE^2 blocks of two band-passed
    thumbnails whose detail correlates at least that entry's minimum."""
    g, side = THUMB_SIDE // BLOCK_SIDE, BLOCK_SIDE
    bx = x.reshape(g, side, g, side).transpose(0, 2, 1, 3).reshape(g * g, side * side)
    by = y.reshape(g, side, g, side).transpose(0, 2, 1, 3).reshape(g * g, side * side)
    energy = np.maximum(bx.var(-1), by.var(-1))
    active = energy > BLOCK_ACTIVE * energy.mean()
    corr, n = _ncc(bx, by)[active], max(1, int(active.sum()))
    return [float((corr >= min_corr).sum() / n) for min_corr, _ in BLOCK_TESTS]


def _passes(shares: list[float]) -> bool:
    return all(s >= need for s, (_, need) in zip(shares, BLOCK_TESTS))


# A thumbnail meets several others in a dedup group (every pair of a cluster is checked): its pixels, band
# and aligned bands (~260 KB) are kept for the most recent ones of this process.
@functools.lru_cache(maxsize=256)
def _gray_band(thumb: bytes) -> tuple[np.ndarray, np.ndarray]:
    t = np.frombuffer(thumb, np.uint8).astype(np.float64).reshape(THUMB_SIDE, THUMB_SIDE)
    d = band(t)
    t.flags.writeable = d.flags.writeable = False
    return t, d


@functools.lru_cache(maxsize=32)
def _crop_bands(thumb: bytes) -> np.ndarray:
    """aligned_bands of every alignment but the identity."""
    w = aligned_bands(_gray_band(thumb)[0], 1)
    w.flags.writeable = False
    return w


def detail_match(a: bytes, b: bytes) -> tuple[bool, list[float], tuple[float, float, float]]:
    """The pixel check of two THUMB_SIDE^2 gray thumbnails: (verdict, block shares, alignment), at identity
    when that passes, else at the alignment (either way round) with the highest detail correlation."""
    da, db = _gray_band(a)[1], _gray_band(b)[1]
    shares = block_shares(da, db)
    if _passes(shares):
        return True, shares, ALIGNMENTS[0]
    wa, wb = _crop_bands(a), _crop_bands(b)
    fa, fb = wa.reshape(len(wa), -1), wb.reshape(len(wb), -1)
    ca, cb = _ncc(fa, db.ravel()[None]), _ncc(fb, da.ravel()[None])
    c0 = float(_ncc(da.ravel(), db.ravel()))
    if max(ca.max(), cb.max()) <= c0:
        return False, shares, ALIGNMENTS[0]
    if ca.max() >= cb.max():
        i = int(ca.argmax())
        shares = block_shares(wa[i], db)
    else:
        i = int(cb.argmax())
        shares = block_shares(da, wb[i])
    return _passes(shares), shares, ALIGNMENTS[1 + i]
