"""Quality gates on model captions: each check returns a Reason (the caption is unusable) or None."""
from __future__ import annotations

import difflib
import re
import unicodedata
import zlib
from dataclasses import dataclass, field
from typing import Any, get_args

from polycap.schemas import OcrResult, Reason
from polycap.schemas.config import CaptionGate
from polycap.transforms.langid import detect_languages, language_share

GATES: tuple[str, ...] = get_args(CaptionGate)   # run in this order; config names them in caption.skip_gates

# Refusals and apologies. STRONG phrases disqualify a caption wherever they appear (outside quotes);
# OPENING ones only when the caption starts with them (a dense caption never opens with an apology).
STRONG = re.compile(
    r"\b(as an ai\b|as a language model|i(?:'m| am) sorry,? but|i apologi[sz]e|i (?:cannot|can't|can not) "
    r"(?:assist|help with|comply|fulfill|process)|i(?:'m| am) (?:unable|not able) to (?:view|see|access|process|"
    r"analy[sz]e|describe|help|assist)|(?:cannot|can't|unable to) (?:view|see|access|open) (?:the|this|your) "
    r"(?:image|picture|photo)|no image (?:was|has been|is) (?:provided|attached|uploaded))", re.IGNORECASE)
OPENING = re.compile(
    r"^\W*(sorry\b|unfortunately\b|i (?:cannot|can't|can not|won't|will not)\b|i(?:'m| am) (?:unable|not able)\b"
    r"|i do not have\b|i don't have\b)", re.IGNORECASE)

# Repetition. Gopher (Rae et al. 2021, table A1) drops documents whose duplicated n-grams (n = 5..10) cover
# more than 15%..10% of the characters; Whisper (Radford et al. 2022) treats a decode whose gzip compression
# ratio exceeds 2.4 as a repetition loop, which also catches loops in unspaced scripts.
DUP_NGRAM_MAX = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
COMPRESSION_MAX = 2.4
MIN_WORDS_FOR_NGRAMS = 20

# Quoted spans: "..." “...” «...» 「...」 『...』 and '...' / ‘...’ when the quotes are not apostrophes.
QUOTED = re.compile(r'"([^"\n]{1,300})"|“([^”\n]{1,300})”|«([^»\n]{1,300})»|「([^」\n]{1,300})」'
                    r"|『([^』\n]{1,300})』|‘([^’\n]{1,300})’|(?<!\w)'([^'\n]{1,300}?)'(?!\w)")
FUZZY_TOKEN = 0.75      # SequenceMatcher ratio for a quoted word to match an OCR word (OCR misreads letters)
GROUNDED_RECALL = 0.6   # share of a quoted span's words that must be found in the OCR text


@dataclass(frozen=True)
class GateConfig:
    min_chars: int = 300
    max_chars: int = 2000
    lang: str = "en"
    check_quoted_text: bool = True
    skip: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_caption_config(cls, cfg: Any) -> GateConfig:
        return cls(min_chars=cfg.min_chars, max_chars=cfg.max_chars, lang=cfg.lang,
                   check_quoted_text=cfg.check_quoted_text, skip=tuple(cfg.skip_gates))


# ---- measurements (pure) ------------------------------------------------------------------------------
def strip_quoted(text: str) -> str:
    return QUOTED.sub(" ", text)


def quoted_spans(text: str) -> list[str]:
    return [next(g for g in m.groups() if g is not None) for m in QUOTED.finditer(text)]


def refusal_phrase(text: str) -> str | None:
    bare = strip_quoted(text)
    m = STRONG.search(bare) or OPENING.search(bare)
    return m.group(0).strip() if m else None


def dup_ngram_fraction(words: list[str], n: int) -> float:
    """Share of characters in repeated word n-grams, first occurrences not counted (Gopher's measure)."""
    total = sum(len(w) for w in words)
    if total == 0 or len(words) < n:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    dup, i = 0, 0
    while i <= len(words) - n:
        gram = tuple(words[i:i + n])
        if gram in seen:
            dup += sum(len(w) for w in gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return dup / total


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw, 9)) if raw else 0.0


def repetition_finding(text: str) -> str | None:
    """A description of the repetition loop in `text`, or None."""
    ratio = compression_ratio(text)
    if ratio > COMPRESSION_MAX:
        return f"compression ratio {ratio:.2f} > {COMPRESSION_MAX}"
    words = re.findall(r"\w+", text.lower())
    if len(words) >= MIN_WORDS_FOR_NGRAMS:
        for n, limit in DUP_NGRAM_MAX.items():
            frac = dup_ngram_fraction(words, n)
            if frac > limit:
                return f"repeated {n}-grams cover {frac:.0%} of characters (> {limit:.0%})"
    return None


def _norm(s: str) -> str:
    s = unicodedata.normalize("NFKC", s).casefold()
    return " ".join(re.findall(r"\w+", s))


def _word_found(word: str, ocr_words: set[str]) -> bool:
    if word in ocr_words:
        return True
    if len(word) < 3:
        return False
    return any(difflib.SequenceMatcher(None, word, w).ratio() >= FUZZY_TOKEN for w in ocr_words)


def ungrounded_quotes(text: str, ocr: OcrResult) -> list[str]:
    """Quoted spans in `text` that the OCR lines do not contain (allowing OCR misreads)."""
    ocr_norm = _norm(" ".join(line.text for line in ocr.lines))
    ocr_flat, ocr_words = ocr_norm.replace(" ", ""), set(ocr_norm.split())
    missing = []
    for span in quoted_spans(text):
        words = _norm(span).split()
        if not words or sum(len(w) for w in words) < 2:
            continue  # punctuation or a single character: nothing to verify
        if "".join(words) in ocr_flat:
            continue
        found = sum(_word_found(w, ocr_words) for w in words)
        if found / len(words) < GROUNDED_RECALL:
            missing.append(span)
    return missing


# ---- checks: Reason | None ----------------------------------------------------------------------------
def check_refusal(text: str) -> Reason | None:
    return Reason.GATE_REFUSAL if refusal_phrase(text) else None


def check_repetition(text: str) -> Reason | None:
    return Reason.GATE_REPETITION if repetition_finding(text) else None


def check_truncated(finish_reason: str) -> Reason | None:
    return Reason.GATE_TRUNCATED if finish_reason == "length" else None


def check_length(text: str, min_chars: int, max_chars: int) -> Reason | None:
    n = len(text.strip())
    if n < min_chars:
        return Reason.GATE_TOO_SHORT
    if max_chars and n > max_chars:
        return Reason.GATE_TOO_LONG
    return None


def check_language(text: str, lang: str) -> Reason | None:
    return Reason.GATE_WRONG_LANGUAGE if language_share(strip_quoted(text), lang) < 0.5 else None


def check_quoted_text(text: str, ocr: OcrResult | None) -> Reason | None:
    """Only where OCR ran (status ok or empty): without OCR there is nothing to check quotes against."""
    if ocr is None or ocr.status not in ("ok", "empty"):
        return None
    return Reason.GATE_UNGROUNDED_TEXT if ungrounded_quotes(text, ocr) else None


def _detail(reason: Reason, text: str, finish_reason: str, ocr: OcrResult | None, g: GateConfig) -> str:
    if reason is Reason.GATE_REFUSAL:
        return f"refusal phrase {refusal_phrase(text)!r}"
    if reason is Reason.GATE_REPETITION:
        return repetition_finding(text) or ""
    if reason is Reason.GATE_TRUNCATED:
        return "generation stopped at max_tokens (finish_reason=length)"
    if reason in (Reason.GATE_TOO_SHORT, Reason.GATE_TOO_LONG):
        return f"{len(text.strip())} chars, allowed {g.min_chars}..{g.max_chars or 'inf'}"
    if reason is Reason.GATE_WRONG_LANGUAGE:
        top = detect_languages(strip_quoted(text))[:1] or (("none", 0.0),)
        return f"expected {g.lang}, detected {top[0][0]} ({top[0][1]:.2f})"
    if reason is Reason.GATE_UNGROUNDED_TEXT and ocr is not None:
        return "quoted text not seen by OCR: " + "; ".join(repr(s) for s in ungrounded_quotes(text, ocr)[:5])
    return ""


def run_gates(text: str, finish_reason: str, ocr: OcrResult | None, g: GateConfig) -> tuple[Reason, str] | None:
    """The first failing gate as (reason, detail), in order of how informative the reason is."""
    checks = {
        "refusal": lambda: check_refusal(text),
        "repetition": lambda: check_repetition(text),
        "truncated": lambda: check_truncated(finish_reason),
        "length": lambda: check_length(text, g.min_chars, g.max_chars),
        "language": lambda: check_language(text, g.lang),
        "quoted_text": lambda: check_quoted_text(text, ocr) if g.check_quoted_text else None,
    }
    for name in GATES:
        if name in g.skip:
            continue
        reason = checks[name]()
        if reason is not None:
            return reason, _detail(reason, text, finish_reason, ocr, g)[:1000]
    return None
