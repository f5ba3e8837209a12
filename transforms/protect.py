"""Protected spans for translation: mask tags, boxes, numbers, URLs, code and math; restore and verify them."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

# Placeholders the model is asked to copy verbatim. Double square brackets around a short id survive
# tokenization in every LLM we tried and almost never occur in natural text; if one does occur in the
# source it is itself masked (first pattern below), so restoring is never ambiguous.
PLACEHOLDER_RE = re.compile(r"\[\[P(\d+)\]\]")


def placeholder(i: int) -> str:
    return f"[[P{i}]]"


# Order matters: earlier alternatives win where they overlap (a fenced block beats the numbers inside it).
# `<ref>` / `</ref>` are masked as tags only: the referred phrase between them is translated
# (Qwen-VL grounding format, arXiv:2308.12966, section 2.3).
_PATTERNS: list[tuple[str, str]] = [
    ("placeholder", r"\[\[P\d+\]\]"),
    ("fenced_code", r"```.*?```|~~~.*?~~~"),
    ("inline_code", r"`[^`\n]+`"),
    ("math", r"\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|(?<![\w$])\$[^$\n]*[^\s$]\$(?![\w$])"),
    ("box", r"<box>.*?</box>"),
    ("quad", r"<quad>.*?</quad>"),
    ("img", r"<img>.*?</img>"),
    ("tag", r"<image>|<img>|</img>|<ref>|</ref>|<video>|<audio>"),
    ("url", r"\b(?:https?|ftp)://[^\s<>\"'`“”‘’«»]+[^\s<>\"'`“”‘’«».,;:!?)\]]"
            r"|\bwww\.[^\s<>\"'`“”‘’«»]+[^\s<>\"'`“”‘’«».,;:!?)\]]"),
    ("email", r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"),
    ("coords", r"\(\s*-?\d+(?:\.\d+)?\s*,\s*-?\d+(?:\.\d+)?\s*\)(?:\s*,\s*\(\s*-?\d+(?:\.\d+)?\s*,\s*"
               r"-?\d+(?:\.\d+)?\s*\))*|\[\s*-?\d+(?:\.\d+)?(?:\s*,\s*-?\d+(?:\.\d+)?){1,7}\s*\]"),
    # multiple-choice labels at the start of a line ("A.", "B)", "(C)") and inline "(D)"
    ("choice", r"(?:^|(?<=\n))[ \t]*\(?[A-H][.)](?=\s)|\([A-H]\)(?=\s|$|[.,:;])"),
    ("number", r"(?<![\d.,])[-+]?\d+(?:[.,:]\d+)*%?"),
]
SPAN_RE = re.compile("|".join(f"(?P<{name}>{pat})" for name, pat in _PATTERNS), re.DOTALL)
# Kinds whose order and exact text must survive; plain numbers are compared as a multiset because
# Korean (SOV) legitimately reorders numerals within a sentence.
STRUCTURAL = frozenset(name for name, _ in _PATTERNS) - {"number"}


@dataclass(frozen=True)
class Span:
    kind: str
    text: str


@dataclass(frozen=True)
class Masked:
    text: str                       # source text with every protected span replaced by a placeholder
    spans: tuple[Span, ...]         # span i is behind placeholder(i)


def find_spans(text: str) -> list[Span]:
    return [Span(m.lastgroup or "", m.group(0)) for m in SPAN_RE.finditer(text)]


def mask(text: str) -> Masked:
    spans: list[Span] = []

    def sub(m: re.Match[str]) -> str:
        spans.append(Span(m.lastgroup or "", m.group(0)))
        return placeholder(len(spans) - 1)

    return Masked(text=SPAN_RE.sub(sub, text), spans=tuple(spans))


def placeholder_ids(text: str) -> list[int]:
    return [int(m.group(1)) for m in PLACEHOLDER_RE.finditer(text)]


def check_placeholders(masked: Masked, output: str, expected: list[int] | None = None) -> str | None:
    """None when the model output carries every expected placeholder exactly once and no others.

    `expected` is the ids present in the text that was sent (a chunk of a long text); default all."""
    ids = placeholder_ids(output)
    want = set(range(len(masked.spans)) if expected is None else expected)
    missing = sorted(want - set(ids))
    extra = sorted({i for i in ids if i not in want})
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if missing or extra or dup:
        return f"placeholders missing={missing} unknown={extra} repeated={dup}"
    structural = [i for i in ids if masked.spans[i].kind in STRUCTURAL]
    if structural != sorted(structural):
        return f"structural placeholders reordered: {structural}"
    return None


def restore(masked: Masked, output: str) -> str:
    """Put the original spans back; unknown placeholders are left as they are (the check reports them)."""
    def sub(m: re.Match[str]) -> str:
        i = int(m.group(1))
        return masked.spans[i].text if i < len(masked.spans) else m.group(0)

    return PLACEHOLDER_RE.sub(sub, output)


def _norm_number(s: str) -> str:
    """Digits only, leading and trailing zeros stripped: 1,000 == 1.000 and "11 million" == "1100만"
    (Korean counts in units of 10^4), "40 per cent" == "40%", "04:00" == "4 giờ". A human translator
    rescales numbers; we only call it a change when the significant digits differ."""
    digits = re.sub(r"\D", "", s)
    return digits.strip("0") or "0"


def compare_spans(source: str, output: str) -> str | None:
    """None when `output` carries the same protected spans as `source`, else a short description.

    Structural spans (tags, boxes, URLs, code, math, choice labels) must match exactly and in order;
    numbers must match as a multiset up to digit grouping (1,000 vs 1.000 in Vietnamese).
    """
    src, out = find_spans(source), find_spans(output)
    s_struct = [s.text for s in src if s.kind in STRUCTURAL]
    o_struct = [s.text for s in out if s.kind in STRUCTURAL]
    if s_struct != o_struct:
        lost = [t for t in s_struct if t not in o_struct][:3]
        added = [t for t in o_struct if t not in s_struct][:3]
        return f"structural spans differ: lost={lost} added={added}" if lost or added \
            else "structural spans reordered"
    s_num = sorted(_norm_number(s.text) for s in src if s.kind == "number")
    o_num = sorted(_norm_number(s.text) for s in out if s.kind == "number")
    # A number is "changed" when one is lost AND another appears: translators legitimately spell a
    # number out ("two") or write one for a word ("June" -> "tháng 6"), but not both at once.
    lost = list((Counter(s_num) - Counter(o_num)).elements())
    added = list((Counter(o_num) - Counter(s_num)).elements())
    # "7.55am" -> "오전 7시 55분" splits one number into two: same significant digits, not a change
    if lost and added and sorted("".join(lost)) != sorted("".join(added)):
        return f"numbers changed: lost={lost[:3]} added={added[:3]}"
    return None
