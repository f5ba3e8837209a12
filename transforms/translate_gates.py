"""Quality gates on one translated text: each check returns a `Reason` or None; `first_failure` runs them all."""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable

from polycap.schemas import Reason
from polycap.transforms.langid import top_language
from polycap.transforms.protect import SPAN_RE, compare_spans

# Length ratio (output chars / English chars) bounds per target language. Derived from the 1,997
# line-aligned human references of NTREX-128 (newstest2019, Federmann et al. 2022): observed
# ko 0.25..2.00 (median 0.53), vi 0.44..2.89 (median 1.10), widened ~10% so no reference is rejected.
# Recompute with `bench/translate_gates.py`, which prints the observed quantiles.
LENGTH_BOUNDS: dict[str, tuple[float, float]] = {"ko": (0.22, 2.2), "vi": (0.40, 3.2)}
DEFAULT_BOUNDS = (0.25, 3.5)
MIN_CHARS_FOR_RATIO = 20        # shorter sources (titles, "Yes.") have ratios dominated by noise

# Script checks. NTREX Korean references have a Hangul share of letters >= 0.43 (except a French line
# left untranslated and a two-word quote); Vietnamese references have >= 25% of words with a Vietnamese
# diacritic or đ. Thresholds sit below those minima.
MIN_HANGUL_SHARE = 0.30
MIN_VI_DIACRITIC_WORD_SHARE = 0.15
MAX_FOREIGN_CJK_SHARE = 0.10    # Han/kana share of letters that marks Chinese or Japanese output
MIN_LETTERS_FOR_LANGDETECT = 40

# "Too much English left": share of word tokens that are common English function words. Human ko/vi
# references have ~0 (proper nouns are not function words); an untranslated sentence has 30-50%.
EN_FUNCTION_WORDS = frozenset(
    "the of and to in is are was were be been for with on that this it as at by from an or but not "
    "have has had will would can could should there their they which who what when where while into "
    "about than then these those its our your his her we you he she them been being do does did".split())
MAX_EN_FUNCTION_SHARE = 0.12
MIN_EN_FUNCTION_COUNT = 3

TERMINAL = ".!?…\"'”’)]»。！？」』"

_INTERJECTION_SRC = re.compile(r"^\W*(yes|yeah|sure|ok|okay|certainly|of course|well|no|right|absolutely)\b",
                               re.IGNORECASE)
_PREAMBLE_ALWAYS = re.compile(
    r"^\W*(?:here(?:'s| is| are)\b[^\n]{0,60}?\b(?:translation|translated)\b"
    r"|(?:the |your )?translation(?: (?:in|into|to) \w+)?\s*[:：]"
    r"|translated(?: text)?\s*[:：]|(?:korean|vietnamese|english)(?: translation| version)?\s*[:：]"
    r"|i(?:'ve| have)? translated\b|as requested\b"
    r"|번역(?:문|본| 결과)?\s*[:：]|다음은[^\n]{0,40}번역|한국어(?:\s*번역)?\s*[:：]"
    r"|bản dịch(?: tiếng việt)?\s*[:：]|(?:dưới đây|sau đây) là bản dịch|tiếng việt\s*[:：])",
    re.IGNORECASE)
_PREAMBLE_INTERJECTION = re.compile(
    r"^\W*(?:sure|certainly|of course|okay|absolutely|alright|"
    r"네|물론(?:입니다|이죠)?|알겠습니다|vâng|chắc chắn rồi|được thôi|dĩ nhiên)\s*[,.!:]", re.IGNORECASE)
_TRAILING_NOTE = re.compile(
    r"(?:\n|^|\()\s*(?:notes?|translator'?s note|explanation|ghi chú|chú thích|참고|주|역주)\s*[:：]",
    re.IGNORECASE)
_KO_OPEN_PARTICLE = re.compile(r"[\uac00-\ud7a3](?:을|를|의|와|과|으로|에게|에서)$")
_SENT_SPLIT = re.compile(r"(?<=[.!?。！？])\s+|\n+")
_CHAR_LOOP = re.compile(r"(.{6,}?)\1{2,}", re.DOTALL)


def _letters(text: str) -> list[str]:
    return [c for c in text if c.isalpha()]


def _is_hangul(c: str) -> bool:
    return "\uac00" <= c <= "\ud7a3" or "\u1100" <= c <= "\u11ff" or "\u3130" <= c <= "\u318f"


def _is_kana(c: str) -> bool:
    return "\u3040" <= c <= "\u30ff"


def _is_han(c: str) -> bool:
    return "\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf"


def _has_vi_mark(word: str) -> bool:
    return any(c in "đĐ" or (c.isalpha() and len(unicodedata.normalize("NFD", c)) > 1) for c in word)


def check_empty(output: str) -> Reason | None:
    return Reason.GATE_EMPTY if not output.strip() else None


def check_truncated(source: str, output: str, finish_reason: str = "stop") -> Reason | None:
    """Cut off by max_tokens, or the source ends a sentence and the output stops mid-sentence."""
    if finish_reason == "length":
        return Reason.GATE_TRUNCATED
    src, out = source.rstrip(), output.rstrip()
    if src and out and src[-1] in TERMINAL and out[-1] not in TERMINAL and out[-1] not in "다요":
        return Reason.GATE_TRUNCATED
    # Korean object/genitive/comitative particles cannot end a sentence or a headline
    if _KO_OPEN_PARTICLE.search(out):
        return Reason.GATE_TRUNCATED
    return None


def check_preamble(source: str, output: str) -> Reason | None:
    if _PREAMBLE_ALWAYS.search(output) and not _PREAMBLE_ALWAYS.search(source):
        return Reason.GATE_PREAMBLE
    if _PREAMBLE_INTERJECTION.search(output) and not _INTERJECTION_SRC.search(source):
        return Reason.GATE_PREAMBLE
    if _TRAILING_NOTE.search(output) and not _TRAILING_NOTE.search(source):
        return Reason.GATE_PREAMBLE
    return None


def check_wrong_language(output: str, target: str) -> Reason | None:
    """Script share for ko/vi (and any CJK in the wrong place), langdetect for long enough texts."""
    letters = _letters(output)
    if not letters:
        return None
    n = len(letters)
    kana = sum(map(_is_kana, letters)) / n
    han = sum(map(_is_han, letters)) / n
    if target == "ko":
        if sum(map(_is_hangul, letters)) / n < MIN_HANGUL_SHARE or kana > 0.02 or han > MAX_FOREIGN_CJK_SHARE:
            return Reason.GATE_WRONG_LANGUAGE
        return None
    if target not in ("ja", "zh") and kana + han > MAX_FOREIGN_CJK_SHARE:
        return Reason.GATE_WRONG_LANGUAGE
    if target == "vi":
        words = re.findall(r"[^\W\d_]+", output)
        if words and sum(map(_has_vi_mark, words)) / len(words) < MIN_VI_DIACRITIC_WORD_SHARE:
            return Reason.GATE_WRONG_LANGUAGE
    if n >= MIN_LETTERS_FOR_LANGDETECT:
        top = top_language(output)
        if top is not None and top[0] != target and top[1] > 0.9:
            return Reason.GATE_WRONG_LANGUAGE
    return None


def check_english_left(source: str, output: str, target: str) -> Reason | None:
    if target == "en":
        return None
    words = re.findall(r"[A-Za-z']+", output)
    all_words = re.findall(r"[^\W\d_]+", output)
    hits = sum(1 for w in words if w.lower() in EN_FUNCTION_WORDS)
    if all_words and hits >= MIN_EN_FUNCTION_COUNT and hits / len(all_words) > MAX_EN_FUNCTION_SHARE:
        return Reason.GATE_ENGLISH_LEFT
    if len(source) >= MIN_CHARS_FOR_RATIO and output.strip() == source.strip():
        return Reason.GATE_ENGLISH_LEFT
    return None


def check_length_ratio(source: str, output: str, target: str) -> Reason | None:
    if len(source.strip()) < MIN_CHARS_FOR_RATIO:
        return None
    lo, hi = LENGTH_BOUNDS.get(target, DEFAULT_BOUNDS)
    ratio = len(output.strip()) / len(source.strip())
    return Reason.GATE_LENGTH_RATIO if not lo <= ratio <= hi else None


def check_spans(source: str, output: str) -> Reason | None:
    return Reason.GATE_SPANS_CHANGED if compare_spans(source, output) else None


def _sentences(text: str) -> list[str]:
    return [re.sub(r"\W+", " ", s).strip().lower() for s in _SENT_SPLIT.split(text)]


def check_repetition(source: str, output: str) -> Reason | None:
    """A sentence repeats more often than any sentence of the source does, or a chunk loops 3+ times."""
    src_max = max(Counter(s for s in _sentences(source) if len(s) >= 8).values(), default=1)
    out_counts = Counter(s for s in _sentences(output) if len(s) >= 8)
    if out_counts and max(out_counts.values()) > max(1, src_max):
        return Reason.GATE_REPETITION
    m = _CHAR_LOOP.search(output)
    if m and not _CHAR_LOOP.search(source) and len(m.group(1).strip()) >= 4:
        return Reason.GATE_REPETITION
    return None


def _plain(text: str) -> str:
    """Text without protected spans: URLs, code and tags say nothing about the language."""
    return SPAN_RE.sub(" ", text)


GateFn = Callable[[str, str, str, str], "Reason | None"]
# Cheap and unambiguous gates first, so a failure names the most specific reason.
GATES: list[tuple[str, GateFn]] = [
    ("empty", lambda s, o, t, f: check_empty(o)),
    ("truncated", lambda s, o, t, f: check_truncated(s, o, f) if f == "length" else None),
    ("preamble", lambda s, o, t, f: check_preamble(s, o)),
    ("english_left", lambda s, o, t, f: check_english_left(_plain(s), _plain(o), t)),
    ("wrong_language", lambda s, o, t, f: check_wrong_language(_plain(o), t)),
    ("spans", lambda s, o, t, f: check_spans(s, o)),
    ("repetition", lambda s, o, t, f: check_repetition(s, o)),
    ("length_ratio", lambda s, o, t, f: check_length_ratio(s, o, t)),
    ("ends_mid_sentence", lambda s, o, t, f: check_truncated(s, o, f)),
]


def first_failure(source: str, output: str, target: str,
                  finish_reason: str = "stop") -> tuple[Reason, str] | None:
    """(reason, detail) of the first gate that fails on the restored output, or None if all pass."""
    for name, gate in GATES:
        reason = gate(source, output, target, finish_reason)
        if reason is not None:
            detail = compare_spans(source, output) if name == "spans" else name
            if name == "length_ratio":
                detail = f"length ratio {len(output.strip()) / max(1, len(source.strip())):.2f}"
            return reason, str(detail)
    return None
