"""Protected spans for translation: mask tags, placeholders, options, paths, URLs, code, numbers; restore, verify."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

# Placeholders the model is asked to copy verbatim. Double square brackets around a short id survive
# tokenization in every LLM we tried and almost never occur in natural text; if one does occur in the
# source it is itself masked (first pattern below), so restoring is never ambiguous.
PLACEHOLDER_RE = re.compile(r"\[\[P(\d+)\]\]")


def placeholder(i: int) -> str:
    return f"[[P{i}]]"


# ASCII-only character classes wherever a span can touch a word: a Korean particle glued to a path, an
# address or an option ("/etc/passwd를", "bug@gnu.org로", "--help를") belongs to the sentence.
_URL_CHAR = r"[A-Za-z0-9\-._~:/?#\[\]@!$&()*+,;=%]"
_URL_END = r"[A-Za-z0-9\-_~/#@$&*+=%]"
_PATH_SEG = r"[A-Za-z0-9_.+@-]*[A-Za-z0-9_+@-]"
_LATIN = r"[A-Za-z0-9_\u00c0-\u024f\u1e00-\u1eff]"      # a Latin letter glued on: the span goes on
# printf conversions as gettext's c-format check reads them (flags, width, precision, length, conversion,
# optional `n$` position); no space flag, so "100 % of" is prose. strftime letters for date formats.
_PRINTF = (r"%(?:\d+\$)?[-+#0']*(?:\d+|\*(?:\d+\$)?)?(?:\.(?:\d+|\*(?:\d+\$)?))?"
           r"(?:hh|ll|[hlLqjzt])?[diouxXeEfFgGaAcspnCS%]"
           r"|%<PRI[a-zA-Z0-9]+>|%\([A-Za-z_]\w*\)[-+#0]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]"
           rf"|%[EO_^#-]?[aAbBcCDeFgGhHIjklmMpPrRTuUVwWyYzZ](?!{_LATIN})")

# Order matters: earlier alternatives win where they start at the same place (a fenced block beats the
# numbers inside it). `<ref>` / `</ref>` are masked as tags only: the referred phrase between them is
# translated (Qwen-VL grounding format, arXiv:2308.12966, section 2.3).
_PATTERNS: list[tuple[str, str]] = [
    ("placeholder", r"\[\[P\d+\]\]"),
    ("fenced_code", r"```.*?```|~~~.*?~~~"),
    # GNU quoting, `like this': a quote style, not a code span (translators turn it into '…' or “…”)
    ("gnu_quote", r"`[^`'\n]{1,80}'"),
    ("inline_code", r"`[^`\n]+`"),
    ("math", r"\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|(?<![\w$])\$[^$\n]*[^\s$]\$(?![\w$])"),
    ("box", r"<box>.*?</box>"),
    ("quad", r"<quad>.*?</quad>"),
    ("img", r"<img>.*?</img>"),
    ("tag", r"<image>|<img>|</img>|<ref>|</ref>|<video>|<audio>"),
    ("url", rf"\b(?:https?|ftp)://{_URL_CHAR}*{_URL_END}|\bwww\.{_URL_CHAR}*{_URL_END}"),
    ("email", r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    ("printf", _PRINTF),
    ("brace", r"\{[A-Za-z_][A-Za-z0-9_.]*(?:![rsa])?(?::[^{}\s]*)?\}|\{\d+\}|\{\}"),
    ("dollar", r"(?<![\w$])(?:\$\{[A-Za-z_][A-Za-z0-9_]*\}|\$[A-Za-z_][A-Za-z0-9_]*)"),
    # `-x`, `--long-name` (the `=VALUE` after it is translated); not `-WIDTH`, `-SIGNAL`: an upper-case
    # word after one dash is a metavariable that translators localize ("-RỘNG"); not `--Long Name--`: long
    # options start in lower case, a capital after two dashes is a heading's decoration; nor a word that
    # runs into more dashes ("---swap-- -system--", a table heading)
    ("option", rf"(?<![\w/.-])(?<!\w['’\"])(?:--[a-z0-9][A-Za-z0-9_-]*|-(?![A-Z]{{2}})[A-Za-z][A-Za-z0-9_-]*)"
               rf"(?<!-)(?![-]|{_LATIN})"),
    ("path", rf"(?<![\w/.~:<>%$)-])(?:~|\.{{1,2}})?/{_PATH_SEG}(?:/{_PATH_SEG})*/?"),
    ("coords", r"\(\s*-?\d+(?:\.\d+)?\s*,\s*-?\d+(?:\.\d+)?\s*\)(?:\s*,\s*\(\s*-?\d+(?:\.\d+)?\s*,\s*"
               r"-?\d+(?:\.\d+)?\s*\))*|\[\s*-?\d+(?:\.\d+)?(?:\s*,\s*-?\d+(?:\.\d+)?){1,7}\s*\]"),
    # dates are localized (12/31/99 -> 31/12/99, or another example date): counted, not compared
    ("date", r"(?<![\d.,/-])\d{1,4}(?:/\d{1,2}/|-\d{1,2}-)\d{1,4}(?![\d/-])"),
    # multiple-choice labels at the start of a line ("A.", "B)", "(C)") and inline "(D)"; not an inline
    # "(C)", which is also the copyright sign that translators write as ©
    ("choice", r"(?:^|(?<=\n))[ \t]*\(?[A-H][.)](?=\s)|\([ABD-H]\)(?=\s|$|[.,:;])"),
    ("number", r"(?<![\d.,])[-+]?\d+(?:[.,:]\d+)*(?:%(?!%))?"),       # 100%% is 100 and a printf %%
]
SPANS_ALTERNATION = "|".join(f"(?P<{name}>{pat})" for name, pat in _PATTERNS)
# Every pattern starts with an ASCII character or a digit (\d also matches other scripts' digits), and none
# can start at a letter that follows an ASCII letter (their lookbehinds, \b or first characters rule it
# out). The guard skips those positions before trying 20 alternatives at each: the same matches
# (tests/transforms/test_protect.py holds it to the bare alternation), 2x faster on English, 3x on Korean.
SPAN_RE = re.compile(rf"(?=[\x00-\x7f]|\d)(?!(?<=[A-Za-z])[A-Za-z])(?:{SPANS_ALTERNATION})", re.DOTALL)
# Kinds whose exact text must survive; plain numbers are compared up to rescaling (see `_norm_number`).
STRUCTURAL = frozenset(name for name, _ in _PATTERNS) - {"number", "gnu_quote", "date"}
# Kinds whose order must survive too: grounding tags pair with the phrase they follow. Everything else may
# move: Korean is SOV and puts an option or a path where its verb wants it; printf conversions are compared
# by the argument they read (`printf_args`), so `%1$s`/`%2$d` reordering is fine and swapping `%s`/`%d` is not.
ORDERED = frozenset({"tag", "box", "quad", "img", "choice", "fenced_code"})
_C_SPEC = re.compile(r"%(?:(\d+)\$)?[-+#0']*(?:\d+|\*(?:\d+\$)?)?(?:\.(?:\d+|\*(?:\d+\$)?))?"
                     r"(hh|ll|[hlLqjzt])?([diouxXeEfFgGaAcspnCS%])")


@dataclass(frozen=True)
class Span:
    kind: str
    text: str


@dataclass(frozen=True)
class Masked:
    text: str                       # source text with every protected span replaced by a placeholder
    spans: tuple[Span, ...]         # span i is behind placeholder(i)


def _ordered(span: Span) -> bool:
    return span.kind in ORDERED


def printf_args(specs: list[str]) -> list[str]:
    """Each printf conversion as `<argument position>:<length><conversion>`: `%d in %s` and its Korean
    `%2$s 안에 %1$d` both give ["1:d", "2:s"]. Width, precision and flags do not change which argument
    is read or its type (`%s` vs `%.250s`); `%%`, strftime and named forms count by their exact text."""
    out, pos = [], 0
    for s in specs:
        m = _C_SPEC.fullmatch(s)
        if m is None or s == "%%":
            out.append(s)
            continue
        if m.group(1):
            n = int(m.group(1))
        else:
            pos += 1
            n = pos
        # %i and %d are the same conversion (C11 7.21.6.1)
        out.append(f"{n}:{m.group(2) or ''}{'d' if m.group(3) == 'i' else m.group(3)}")
    return out


def _metavariable(kind: str, text: str) -> bool:
    """`/REGEXP/`, `{INTEGER}`: upper-case words that name an argument, which translators localize."""
    if kind == "path":
        return not re.search(r"[a-z0-9]", text)
    return kind == "brace" and bool(re.fullmatch(r"\{[A-Z][A-Z_]+\}", text))


_PLACEHOLDER_ONLY = re.compile(_PRINTF + r"|\{[A-Za-z_][A-Za-z0-9_.]*\}|\{\d*\}|\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")


def _quoted_placeholder(code: str) -> bool:
    """`%s` between backquotes is a quote around a placeholder (glibc's and wget's style), not code: the
    translator writes “%s” and the placeholder is what must survive."""
    return _PLACEHOLDER_ONLY.fullmatch(code[1:-1]) is not None


@lru_cache(maxsize=8192)   # one scan per text: the spans, the masked text and the plain text all read it
def span_matches(text: str) -> tuple[tuple[str, int, int], ...]:
    """(kind, start, end) of every SPAN_RE match, as `SPAN_RE.finditer` gives them."""
    return tuple((m.lastgroup or "", m.start(), m.end()) for m in SPAN_RE.finditer(text))


def plain_text(text: str, number: str = " ", span: str = " ") -> str:
    """`text` with each protected span replaced by `span`, one space by default (what `SPAN_RE.sub(" ",
    text)` gives), a plain number by `number`."""
    out: list[str] = []
    at = 0
    for kind, start, end in span_matches(text):
        out += (text[at:start], number if kind == "number" else span)
        at = end
    out.append(text[at:])
    return "".join(out)


def find_spans(text: str) -> list[Span]:
    """Protected spans in reading order; a GNU quote counts as the spans inside it, its quotes are style."""
    return list(_spans(text))


@lru_cache(maxsize=8192)   # the gates and the assembly both compare the spans of the same source and output
def _spans(text: str) -> tuple[Span, ...]:
    out: list[Span] = []
    for kind, start, end in span_matches(text):
        found = text[start:end]
        if _metavariable(kind, found):
            continue
        if kind == "gnu_quote" or (kind == "inline_code" and _quoted_placeholder(found)):
            out += _spans(found[1:-1])
        else:
            out.append(Span(kind, found))
    return tuple(out)


def mask(text: str) -> Masked:
    """Every protected span behind a placeholder; a GNU quote is masked whole, so it comes back as written."""
    spans: list[Span] = []
    out: list[str] = []
    at = 0
    for kind, start, end in span_matches(text):
        found = text[start:end]
        if _metavariable(kind, found):
            continue
        spans.append(Span(kind, found))
        out += (text[at:start], placeholder(len(spans) - 1))
        at = end
    out.append(text[at:])
    return Masked(text="".join(out), spans=tuple(spans))


def placeholder_ids(text: str) -> list[int]:
    return [int(m.group(1)) for m in PLACEHOLDER_RE.finditer(text)]


def check_placeholders(masked: Masked, output: str, expected: list[int] | None = None) -> str | None:
    """None when the model output carries every expected placeholder exactly once and no others.

    `expected` is the ids present in the text that was sent (a chunk of a long text); default all.
    A placeholder the model altered (`[[P 1]]`, `[[P1]`) counts as missing."""
    ids = placeholder_ids(output)
    want = set(range(len(masked.spans)) if expected is None else expected)
    missing = sorted(want - set(ids))
    extra = sorted({i for i in ids if i not in want})
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if missing or extra or dup:
        return f"placeholders missing={missing} unknown={extra} repeated={dup}"
    ordered = [i for i in ids if _ordered(masked.spans[i])]
    if ordered != sorted(ordered):
        return f"structural placeholders reordered: {ordered}"
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


_WEB_PREFIX = re.compile(r"^(?:https?://)?(?:www\.)?", re.IGNORECASE)


def _same_address(span: Span) -> str:
    """A span's text as compared: a URL without its http/https scheme and leading www. (translators bring
    "http://www.gnu.org/..." up to "https://gnu.org/...": the same page)."""
    return _WEB_PREFIX.sub("", span.text) if span.kind == "url" else span.text


def _diff(a: list[str], b: list[str]) -> tuple[list[str], list[str]]:
    return list((Counter(a) - Counter(b)).elements()), list((Counter(b) - Counter(a)).elements())


def compare_spans(source: str, output: str) -> str | None:
    """None when `output` carries the same protected spans as `source`, else a short description.

    Structural spans (tags, boxes, placeholders, options, paths, URLs, code, math) must survive exactly,
    each as often as in the source: a missing, duplicated or altered one fails. Tags keep their order;
    printf conversions must read the same arguments with the same types. Numbers must match as a
    multiset up to digit grouping and rescaling (1,000 vs 1.000 in Vietnamese, 2000만 for 20 million).
    """
    src, out = find_spans(source), find_spans(output)
    s_struct = [_same_address(s) for s in src if s.kind in STRUCTURAL - {"printf"}]
    o_struct = [_same_address(s) for s in out if s.kind in STRUCTURAL - {"printf"}]
    s_struct += printf_args([s.text for s in src if s.kind == "printf"])
    o_struct += printf_args([s.text for s in out if s.kind == "printf"])
    lost, added = _diff(s_struct, o_struct)
    if lost or added:
        return f"structural spans differ: lost={lost[:3]} added={added[:3]}"
    if [s.text for s in src if _ordered(s)] != [s.text for s in out if _ordered(s)]:
        return "structural spans reordered"
    # a date may be localized, or written out where the source named the month; only losing one counts
    if sum(s.kind == "date" for s in src) > sum(s.kind == "date" for s in out):
        return "date lost"
    s_num = [_norm_number(s.text) for s in src if s.kind == "number"]
    o_num = [_norm_number(s.text) for s in out if s.kind == "number"]
    # A number is "changed" when one is lost AND another appears: translators legitimately spell a
    # number out ("two") or write one for a word ("June" -> "tháng 6"), but not both at once.
    lost, added = _diff(s_num, o_num)
    # "7.55am" -> "오전 7시 55분" splits one number into two: same significant digits, not a change
    if lost and added and sorted("".join(lost)) != sorted("".join(added)):
        return f"numbers changed: lost={lost[:3]} added={added[:3]}"
    return None
