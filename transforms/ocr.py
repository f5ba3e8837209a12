"""OCR stage: PP-OCR text lines per image, boxes on Qwen-VL's 0–1000 grid, in reading order, with language."""
from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from itertools import pairwise
from typing import Any, NamedTuple, cast

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import PredictionResult, RunInference

from polycap.schemas import OcrLine, OcrResult, Reason, Reject, Sample
from polycap.transforms.backends.ocr_handler import OcrModelHandler
from polycap.transforms.backends.ocr_models import OcrModelError, check_ocr_models
from polycap.transforms.backends.ocr_script import unsupported_detail
from polycap.transforms.langid import top_language
from polycap.transforms.plumbing import RoutingDoFn, error_detail, make_reject, route_stage, samples_in

__all__ = [
    "OcrModelError",
    "RunOcr",
    "check_ocr_models",
    "dominant_lang",
    "normalize_quad",
    "quad_box",
    "reading_order",
    "ref_box",
    "render_grounded",
    "rotate_grid_box",
    "text_area_ratio",
    "to_ocr_result",
]

STAGE = "ocr"
# Qwen-VL (Bai et al. 2023, §2.2): box coordinates are normalized to [0, 1000) and written as integers.
GRID = 1000


# ---- pure functions ---------------------------------------------------------------------------------

def to_grid(v: float, size: int) -> int:
    """A pixel coordinate on an axis of `size` pixels -> integer on the [0, 1000) grid."""
    return min(GRID - 1, max(0, math.floor(v * GRID / max(size, 1))))


def normalize_quad(quad_px: list[float], width: int, height: int) -> list[int]:
    """8 pixel floats (x1, y1, ..., x4, y4) -> 8 grid ints."""
    return [to_grid(v, width if i % 2 == 0 else height) for i, v in enumerate(quad_px[:8])]


def quad_box(quad: list[int]) -> list[int]:
    """Axis-aligned [x1, y1, x2, y2] enclosing a grid quad."""
    xs, ys = quad[0::2], quad[1::2]
    return [min(xs), min(ys), max(xs), max(ys)]


def _rotate_grid_point(x: float, y: float, k: int) -> tuple[float, float]:
    """A grid point on the stored image -> the same point on `np.rot90(image, k)`."""
    for _ in range(k % 4):
        x, y = y, GRID - x
    return x, y


def rotate_grid_box(box: list[int], k: int) -> list[int]:
    """A grid box on the stored image -> the same box on `np.rot90(image, k)` (the upright page)."""
    x1, y1, x2, y2 = box
    for _ in range(k % 4):  # one counter-clockwise quarter turn: (x, y) -> (y, GRID - x)
        x1, y1, x2, y2 = y1, GRID - x2, y2, GRID - x1
    return [x1, y1, x2, y2]


# ---- reading order: recursive XY-cut on line boxes ----------------------------------------------------
# Boxes are laid out in upright-page pixels so that gaps compare with line heights on both axes.
# DB detectors pad each line polygon (unclip ratio 1.5, Liao et al. 2020): measured on the UNLV magazine
# pages that tests/transforms/test_ocr_backends.py reads, a box overhangs its ink by ~0.2-0.4 line heights,
# enough for the boxes of two columns 17 px apart to touch. INK_PAD trims that off both ends before gutters
# are looked for.
INK_PAD = 0.2
# A column gutter is at least half a line height of whitespace between trimmed boxes. Boxes are whole
# lines, so a gap on one row already exceeds a word space; a gutter must also run through every line.
GUTTER_EM = 0.5
# Captions and pull quotes may straddle a gutter (UNLV 8087_054: a 7-line caption sits across it): up to
# this share of a block's lines, each narrower than FLOAT_MAX_WIDTH of the block and fewer than either
# column's lines, is read after the columns.
FLOAT_SHARE = 0.25
FLOAT_MAX_WIDTH = 0.5

Box = tuple[float, float, float, float]


def _size(box: Box) -> float:
    """Line height (the short side, so vertical lines of CJK text count too)."""
    return max(min(box[2] - box[0], box[3] - box[1]), 1e-6)


def _ink_x(box: Box) -> tuple[float, float]:
    pad = min(INK_PAD * _size(box), 0.25 * (box[2] - box[0]))
    return box[0] + pad, box[2] - pad


def _em(items: list) -> float:
    sizes = sorted(_size(b) for b, _ in items)
    return sizes[len(sizes) // 2]


def _gaps(spans: list[tuple[float, float]], min_gap: float) -> list[float]:
    """Cut positions between merged [start, end) spans separated by at least `min_gap`."""
    cuts: list[float] = []
    end: float | None = None
    for lo, hi in sorted(spans):
        if end is not None and lo - end >= min_gap:
            cuts.append((end + lo) / 2)
        end = hi if end is None else max(end, hi)
    return cuts


def _split(items: list, axis: int, cuts: list[float]) -> list[list]:
    """Groups of items between consecutive cuts, by box centre along `axis` (0 = x, 1 = y)."""
    groups: list[list] = [[] for _ in range(len(cuts) + 1)]
    for box, ln in items:
        centre = (box[axis] + box[axis + 2]) / 2
        groups[sum(centre >= c for c in cuts)].append((box, ln))
    return [g for g in groups if g]


def _columns(items: list, em: float) -> list[list]:
    """Columns split at gutters that no line crosses, left to right; [] when there are none."""
    cuts = _gaps([_ink_x(b) for b, _ in items], GUTTER_EM * em)
    groups = _split(items, 0, cuts)
    return groups if cuts and all(len(g) >= 2 for g in groups) else []


def _bands(items: list, em: float) -> list[list]:
    """Horizontal bands split at whitespace rows, top to bottom; consecutive bands that both have a
    gutter (clean or crossed by a caption) are one block (a two-column body whose lines happen to align),
    so its columns stay whole."""
    blocks: list[list] = []
    prev_multi = False
    for band in _split(items, 1, _gaps([(b[1], b[3]) for b, _ in items], 1.0)):
        multi = bool(_columns(band, em) or _floating_split(band, em))
        if multi and prev_multi:
            blocks[-1].extend(band)
        else:
            blocks.append(list(band))
        prev_multi = multi
    return blocks


def _low_runs(spans: list[tuple[float, float]], cap: int) -> list[tuple[float, float]]:
    """Maximal x runs crossed by at most c lines, for every c up to `cap` (c = 0: clean gutters)."""
    edges = sorted({v for s in spans for v in s})
    cells = [(lo, hi, sum(a < hi and b > lo for a, b in spans)) for lo, hi in pairwise(edges)]
    runs: set[tuple[float, float]] = set()
    for c in range(cap + 1):
        run: list[float] = []
        for lo, hi, n in [*cells, (edges[-1], edges[-1], cap + 1)]:
            if n <= c:
                run = [run[0] if run else lo, hi]
            elif run:
                runs.add((run[0], run[1]))
                run = []
    return sorted(runs)


def _floating_split(items: list, em: float) -> tuple[list, list, list] | None:
    """(left, right, floating) around the gutter crossed by the fewest short lines, or None."""
    spans = [_ink_x(b) for b, _ in items]
    cap = max(1, int(FLOAT_SHARE * len(items)))
    width = max(b[2] for b, _ in items) - min(b[0] for b, _ in items)
    best = None
    for lo, hi in _low_runs(spans, cap):
        if hi - lo < GUTTER_EM * em:
            continue
        left = [it for it, (_, b) in zip(items, spans) if b <= lo]
        right = [it for it, (a, _) in zip(items, spans) if a >= hi]
        floating = [it for it, (a, b) in zip(items, spans) if b > lo and a < hi]
        if (min(len(left), len(right)) <= max(1, len(floating)) or len(floating) > cap
                or any(b[2] - b[0] > FLOAT_MAX_WIDTH * width for b, _ in floating)):
            continue
        if best is None or (len(floating), lo - hi) < best[0]:
            best = ((len(floating), lo - hi), (left, right, floating))
    return best[1] if best else None


class _Placed(NamedTuple):
    """A line on the upright page: its centre line (centre point, slope dy/dx along the text) and height.
    Skewed lines (a photo taken at an angle, a scanned page 2-6 degrees off) are grouped into rows along
    their own slope, not by axis-aligned y ranges, which overlap between consecutive skewed lines."""

    line: OcrLine
    cx: float
    cy: float
    slope: float
    height: float
    width: float


def _place(ln: OcrLine, pts: list[tuple[float, float]]) -> _Placed:
    """Centre line of a line quad (4 points in any order around it): the longer pair of opposite edges runs
    along the text. Vertical text (steeper than 45 degrees) gets slope 0, i.e. axis-aligned rows."""
    p = np.asarray(pts, dtype=np.float64)
    e01, e12 = p[1] - p[0], p[2] - p[1]
    along, across = (e01, e12) if np.hypot(*e01) >= np.hypot(*e12) else (e12, e01)
    along = along + ((p[2] - p[3]) if along is e01 else (p[3] - p[0]))   # both long edges, same direction
    slope = float(along[1] / along[0]) if abs(along[0]) > abs(along[1]) else 0.0
    height = float(np.hypot(*across))
    width = float(np.hypot(*along)) / 2
    cx, cy = (float(v) for v in p.mean(axis=0))
    return _Placed(ln, cx, cy, slope, max(height, 1e-6), width)


def _rows(items: list) -> list[OcrLine]:
    """Top-to-bottom rows, left-to-right within a row. A line joins the row whose centre line (that of its
    widest member, extended along its slope) passes within half a line height (the larger of the two) of the
    line's centre; for axis-aligned boxes that is the old rule "vertical overlap >= half the smaller height"."""
    rows: list[list[tuple[Box, _Placed]]] = []
    refs: list[_Placed] = []
    for box, pl in sorted(items, key=lambda kb: (kb[1].cy, kb[0][0])):
        best, best_d = None, 0.0
        for i, ref in enumerate(refs):
            d = abs(pl.cy - (ref.cy + ref.slope * (pl.cx - ref.cx)))
            if d <= 0.5 * max(pl.height, ref.height) and (best is None or d < best_d):
                best, best_d = i, d
        if best is None:
            rows.append([(box, pl)])
            refs.append(pl)
        else:
            rows[best].append((box, pl))
            if pl.width > refs[best].width:
                refs[best] = pl
    mid_x = sum(pl.cx for _, pl in items) / max(len(items), 1)
    order = sorted(range(len(rows)), key=lambda i: refs[i].cy + refs[i].slope * (mid_x - refs[i].cx))
    return [pl.line for i in order for _, pl in sorted(rows[i], key=lambda kb: kb[0][0])]


def _xy_cut(items: list, depth: int = 0) -> list[OcrLine]:
    """Recursive XY-cut (Nagy & Seth 1984): columns at clean gutters (left to right), else bands at
    whitespace rows (top to bottom), else columns around floating captions; a block with none of these
    is read in rows."""
    if len(items) <= 1 or depth > 32:
        return _rows(items)
    em = _em(items)
    groups = _columns(items, em) or _bands(items, em)
    if len(groups) <= 1:
        groups = [g for g in _floating_split(items, em) or () if g]
    if len(groups) <= 1:
        return _rows(items)
    return [ln for g in groups for ln in _xy_cut(g, depth + 1)]


def reading_order(lines: list[OcrLine], k: int = 0, size: tuple[int, int] | None = None) -> list[OcrLine]:
    """Lines in reading order on the upright page (`k` quarter turns from the stored image of `size` =
    (width, height) pixels; None = square): columns left to right, blocks top to bottom, rows left to
    right within a column (left-to-right, top-to-bottom scripts). Boxes stay on the 0–1000 grid."""
    w, h = size or (GRID, GRID)
    if k % 2:
        w, h = h, w
    sx, sy = w / GRID, h / GRID
    items = []
    for ln in lines:
        x1, y1, x2, y2 = rotate_grid_box(ln.box, k)
        quad = ln.quad if len(ln.quad) == 8 else [ln.box[i] for i in (0, 1, 2, 1, 2, 3, 0, 3)]
        pts = [_rotate_grid_point(x, y, k) for x, y in zip(quad[0::2], quad[1::2])]
        placed = _place(ln, [(x * sx, y * sy) for x, y in pts])
        items.append(((x1 * sx, y1 * sy, (x2 + 1) * sx, (y2 + 1) * sy), placed))
    return _xy_cut(items)


def _polygon_area(quad: list[float]) -> float:
    xs, ys = quad[0::2], quad[1::2]
    return abs(sum(xs[i] * ys[(i + 1) % 4] - xs[(i + 1) % 4] * ys[i] for i in range(4))) / 2


def text_area_ratio(quads_px: list[list[float]], width: int, height: int) -> float:
    """Share of the image covered by text lines: sum of line-quad areas / image area, capped at 1
    (detected lines rarely overlap, so the sum is the union up to rounding)."""
    if width <= 0 or height <= 0:
        return 0.0
    return round(min(1.0, sum(_polygon_area(q) for q in quads_px) / (width * height)), 4)


# Scripts that name their language outright; the rest are resolved by langdetect or reported as a script.
_SCRIPT_LANG = {"HANGUL": "ko", "HIRAGANA": "ja", "KATAKANA": "ja", "GREEK": "el", "THAI": "th",
                "HEBREW": "he", "TAMIL": "ta", "TELUGU": "te"}
_SCRIPT_CODE = {"LATIN": "latn", "CYRILLIC": "cyrl", "ARABIC": "arab", "DEVANAGARI": "deva", "CJK": "zh"}
_SYLLABIC = {"HANGUL", "HIRAGANA", "KATAKANA", "CJK"}
_VI_LETTERS = set("ăơưđĂƠƯĐạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ")


def _script(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return name.split(" ", 1)[0] if name else ""


def dominant_lang(texts: Iterable[str]) -> str | None:
    """ISO 639-1 code of the dominant language where the script or langdetect says it clearly,
    else an ISO 15924 script code (`latn`, `cyrl`, ...); None when there are no letters."""
    text = " ".join(texts)
    counts: Counter[str] = Counter()
    for script in map(_script, text):
        if script in _SCRIPT_LANG or script in _SCRIPT_CODE:
            # a Hangul/Han/kana character is a syllable or a word: weigh it like ~3 Latin letters
            counts[script] += 3 if script in _SYLLABIC else 1
    if not counts:
        return None
    if counts["HIRAGANA"] + counts["KATAKANA"] > 0 and counts.most_common(1)[0][0] in (
            "CJK", "HIRAGANA", "KATAKANA"):
        return "ja"  # Japanese mixes kana with kanji; any kana among CJK text means Japanese
    top = counts.most_common(1)[0][0]
    if top in _SCRIPT_LANG:
        return _SCRIPT_LANG[top]
    if top == "LATIN" and sum(c in _VI_LETTERS for c in text) >= max(2, 0.05 * counts["LATIN"]):
        return "vi"
    if top != "CJK" and counts[top] >= 12:
        guess = top_language(text)
        if guess and guess[1] >= 0.8:
            return guess[0]
    return _SCRIPT_CODE[top]


def ref_box(text: str, box: list[int]) -> str:
    """Qwen-VL's grounding text form for one line."""
    x1, y1, x2, y2 = box
    return f"<ref>{text}</ref><box>({x1},{y1}),({x2},{y2})</box>"


def render_grounded(lines: list[OcrLine], sep: str = "\n") -> str:
    """All lines (already in reading order) in Qwen-VL's `<ref>TEXT</ref><box>(x1,y1),(x2,y2)</box>` form."""
    return sep.join(ref_box(ln.text, ln.box) for ln in lines)


def to_ocr_result(raw: dict[str, Any], min_score: float) -> OcrResult:
    """Engine output (pixel quads on the stored image) -> OcrResult: grid boxes, filtered, ordered."""
    w, h = raw["width"], raw["height"]
    kept = [(t.strip(), q, s) for t, q, s in raw["lines"] if s >= min_score and t.strip()]
    lines = []
    for text, quad_px, score in kept:
        quad = normalize_quad(quad_px, w, h)
        lines.append(OcrLine(text=text, box=quad_box(quad), quad=quad, score=round(score, 4)))
    lines = reading_order(lines, raw.get("angle", 0) // 90, (w, h))
    # lines in a script no installed recognizer reads were left out by the engine (ocr_script.ScriptRouter)
    unsupported = list(raw.get("unsupported") or [])
    status = Reason.OCR_UNSUPPORTED_SCRIPT.value if unsupported else ("ok" if lines else "empty")
    return OcrResult(engine=raw["engine"], models=dict(raw["models"]), status=status,
                     lines=lines, lang=dominant_lang(ln.text for ln in lines),
                     text_area_ratio=text_area_ratio([q for _, q, _ in kept], w, h),
                     error=unsupported_detail(unsupported) if unsupported else None)


# ---- Beam -------------------------------------------------------------------------------------------

def _provenance(cfg: Any, raw: dict[str, Any]) -> dict[str, Any]:
    # no per-image timing: records are content and a rerun writes byte-identical shards
    # (tests/packaging/test_demo_digest.py); the engine's time is the `ocr/engine_ms` metric (ocr-eval reads it)
    return {"backend": cfg.backend, "engine": raw.get("engine", cfg.backend), "models": raw.get("models", {}),
            "params": {"min_score": cfg.min_score, "langs": list(cfg.langs), "device": cfg.device,
                       "orientation": cfg.orientation, "det_max_side": cfg.det_max_side,
                       "det_thresh": cfg.det_thresh, "det_box_thresh": cfg.det_box_thresh,
                       "det_unclip_ratio": cfg.det_unclip_ratio},
            "angle": raw.get("angle", 0), "error": raw.get("error")}


def _failed(sample: Sample, error: str, cfg: Any, raw: dict[str, Any]) -> Sample | Reject:
    """OCR failed for this sample: a Reject (on_failure=reject) or the sample with ocr.status=failed."""
    if cfg.on_failure == "reject":
        return make_reject(sample, STAGE, Reason.OCR_FAILED, error[:2000])
    result = OcrResult(engine=raw.get("engine", cfg.backend), models=dict(raw.get("models", {})),
                       status="failed", error=error[:2000])
    return replace(sample, ocr=result, provenance={**sample.provenance, STAGE: _provenance(cfg, raw)})


class _OcrDoFn(RoutingDoFn):
    stage = STAGE

    def __init__(self, cfg: Any):
        self.cfg = cfg


class _AttachOcr(_OcrDoFn):
    """PredictionResult(sample, raw engine output) -> sample with `ocr` + provenance, or a reject."""

    def process(self, pred: PredictionResult):
        sample, raw = cast(Sample, pred.example), cast("dict[str, Any]", pred.inference)
        if raw.get("error"):
            self.count("failed")
            yield self.route(_failed(sample, raw["error"], self.cfg, raw))
            return
        result = to_ocr_result(raw, self.cfg.min_score)
        if raw.get("angle") or result.status == "empty":
            self.count("rotated" if raw.get("angle") else "empty")
        if result.status == Reason.OCR_UNSUPPORTED_SCRIPT:
            self.count(Reason.OCR_UNSUPPORTED_SCRIPT.value)
        prov = {**sample.provenance, STAGE: _provenance(self.cfg, raw)}
        yield self.route(replace(sample, ocr=result, provenance=prov))


class _FailBatch(_OcrDoFn):
    """A dead-lettered batch `(samples, error)` from RunInference -> one OCR failure per sample in it
    (ocr.on_failure decides: a reject, or the sample kept with ocr.status=failed)."""

    def process(self, bad: tuple[Any, Any]):
        batch, err = bad
        for sample in samples_in(batch):
            self.count("failed")
            yield self.route(_failed(sample, error_detail(err), self.cfg, {}))


class RunOcr(beam.PTransform):
    """Samples -> (samples with `ocr`, rejects). Models are checked when the pipeline is built, so a
    missing or corrupt model fails once, before any image is read."""

    def __init__(self, cfg: Any):
        super().__init__()
        self.cfg = cfg

    def expand(self, pcoll):
        cfg = self.cfg
        if cfg.engine == "onnxruntime" or cfg.backend == "rapidocr":
            check_ocr_models(cfg)  # local models: fail here, once, not per image on the workers
        main, dlq = pcoll | "Infer" >> RunInference(OcrModelHandler(cfg)).with_exception_handling()
        attached, attach_rejects = route_stage(main, "Attach", _AttachOcr(cfg), STAGE)
        failed, failed_rejects = route_stage(dlq.failed_inferences, "FailedBatches", _FailBatch(cfg), STAGE)
        samples = (attached, failed) | "OcrSamples" >> beam.Flatten()
        rejects = (attach_rejects, failed_rejects) | "OcrRejects" >> beam.Flatten()
        return samples, rejects
