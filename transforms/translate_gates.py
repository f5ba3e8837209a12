"""Quality gates on one translated text: each check returns a `Reason` or None; `first_failure` runs them all."""
from __future__ import annotations

import gzip
import json
import math
import re
import unicodedata
from bisect import bisect_left
from collections.abc import Callable, Iterable
from functools import lru_cache
from importlib.resources import files

from polycap.schemas import Reason
from polycap.transforms.coverage import last_ending, predicted_length, uncovered
from polycap.transforms.langid import top_language
from polycap.transforms.protect import compare_spans, plain_text, span_matches

# -- length ---------------------------------------------------------------------------------------------
# Bounds on log(output characters / source characters), whitespace runs counted once, per target language
# and source length (characters). Fitted by `python -m bench.translate_gates_fit` on human translations of
# two kinds, the dev Debian catalogs (UI strings) and half of NTREX-128 (news): per bucket the loosest of
# the two domains' 0.3 % and 99.9 % quantiles, never tighter than a longer bucket's; the data are in
# bench/results/translate_gates_length.json. A bucket is (min source characters, lower, upper), the last
# one holds every longer source; shorter sources have no ratio check.
LENGTH_BUCKETS: dict[str, list[tuple[int, float, float]]] = {
    "ko": [(4, -1.872, 0.539), (8, -1.872, 0.511), (16, -1.335, 0.431), (32, -1.139, 0.428), (64, -1.139, 0.108)],
    "vi": [(4, -1.099, 1.872), (8, -0.981, 1.695), (16, -0.819, 1.695), (32, -0.819, 0.86), (64, -0.516, 0.852)],
}
DEFAULT_BUCKETS = [(16, math.log(0.25), math.log(3.5))]
MIN_SENTENCE_CHARS = 64     # the last bucket: sources this long keep their lower bound under the omission model
# Where a translation may end. `word_ends.json.gz` (package data, fitted by the same script on the same human
# texts) counts, per target language, each word (a Hangul run for Korean, a Latin-letter syllable for
# Vietnamese; protected spans removed): how often it occurs whole, how often at the end of a clause (before
# the text's end or closing punctuation), and how often longer words start with it. A last word that human
# text only continues, as the start of a longer word ("디렉" for 디렉터리, "chư" for chưa) or as a word
# that never closes a clause ("các", "của"), is evidence of a cut: two features of the omission model below.
WORD_ENDS_FILE = "word_ends.json.gz"

# -- script and language --------------------------------------------------------------------------------
# Share of Hangul among the output's letters that were not copied from the source (names, commands):
# human Korean UI strings and NTREX references sit far above it (bench/results/translate_gates_catalogs.json).
MIN_HANGUL_SHARE = 0.5
MAX_FOREIGN_CJK_SHARE = 0.10    # Han/kana share of letters that marks Chinese or Japanese output
MAX_HANGUL_IN_LATIN = 0.05      # Hangul share that marks Korean given for a Latin-script language
# Vietnamese written without any diacritic is English (or another Latin language) once there are enough
# new words to judge; a one- or two-word answer ("ngang", "trong") carries too few syllables to tell.
MIN_VI_WORDS_FOR_DIACRITICS = 4
MIN_VI_DIACRITIC_WORD_SHARE = 0.15
MIN_LETTERS_FOR_LANGDETECT = 40

# "Too much English left": share of word tokens that are common English function words. Human ko/vi
# references have ~0 (proper nouns are not function words); an untranslated sentence has 30-50%.
EN_FUNCTION_WORDS = frozenset(
    "the of and to in is are was were be been for with on that this it as at by from an or but not "
    "have has had will would can could should there their they which who what when where while into "
    "about than then these those its our your his her we you he she them been being do does did".split())
MAX_EN_FUNCTION_SHARE = 0.12
MIN_EN_FUNCTION_COUNT = 3

SENTENCE_END = ".!?…。！？"
# Sources this long that end with a period are sentences; shorter ones may be labels whose Korean
# translation ends in a noun without a period
# ("CPU time limit exceeded." -> "CPU 시간 제한 초과"); Vietnamese translators keep the period from three
# words on (dev catalogs and even NTREX lines: 0 of 82 references with 3-5 words end without one)
MIN_SENTENCE_WORDS = 6
MIN_SENTENCE_WORDS_BY_LANG = {"vi": 3}
_BRACKETS = [("(", ")"), ("[", "]"), ("{", "}"), ("<", ">"), ("“", "”"), ("«", "»"), ("「", "」"), ("『", "』")]

# -- preambles ------------------------------------------------------------------------------------------
_PREAMBLE_ALWAYS = re.compile(
    r"^\W*(?:(?:sure|certainly|of course|okay|ok|absolutely|alright)\W+)?"
    r"(?:here(?:'s| is| are)\b[^\n]{0,60}?\b(?:translation|translated|version)\b"
    r"|(?:the |your )?translation(?: (?:in|into|to) \w+)?\s*[:：]"
    r"|translated(?: text)?\s*[:：]|(?:korean|vietnamese|english)(?: translation| version)?\s*[:：]"
    r"|i(?:'ve| have)? translated\b|as requested\b"
    r"|(?:네|예|물론(?:입니다|이죠)?|알겠습니다)?\W*(?:번역(?:문|본| 결과)?\s*[:：]|다음은[^\n]{0,40}번역"
    r"|한국어(?:\s*번역)?\s*[:：]|번역하면\b)"
    r"|(?:vâng|dạ|chắc chắn rồi|được thôi)?\W*(?:bản dịch(?: tiếng việt)?\s*[:：]"
    r"|(?:đây|dưới đây|sau đây) là bản dịch|tiếng việt\s*[:：]))",
    re.IGNORECASE)
# An answer-like opener in the output is a preamble unless the source has an affirmative that it
# translates ("Yes, ..." -> "Vâng, ...", "I mean, of course" -> "물론입니다"). "No, ..." licenses none.
_OUT_INTERJECTION = re.compile(
    r"^\W*(sure|certainly|of course|okay|ok|absolutely|alright|네|예|물론(?:입니다|이죠)?|알겠습니다|"
    r"vâng|dạ|chắc chắn rồi|được thôi|dĩ nhiên)\s*[,.!:]", re.IGNORECASE)
_SRC_AFFIRMATIVE = re.compile(
    r"\b(yes|yeah|yep|sure|ok|okay|certainly|of course|right|all right|alright|absolutely|fine|"
    r"understood|indeed)\b", re.IGNORECASE)
# A translator's or model's note appended after the text; "Ghi chú:" / "참고:" as the translation of the
# source's own "Note:" is licensed by any note-like word in the source.
_APPENDED_NOTE = re.compile(
    r"(?:\n|\()\s*(?:notes?|translator'?s note|explanation|ghi chú|chú thích|참고|역주)\s*[:：]", re.IGNORECASE)
_SRC_NOTE = re.compile(r"\b(?:notes?|n\.?b\.?|remarks?|hints?|comments?|explanation)\b", re.IGNORECASE)

# a first line or clause that speaks about the translation ("Korean version:", "Dưới đây là bản dịch\n")
# ("biên dịch" is compile, "dịch vụ" service)
_META_WORDS = re.compile(r"translat|\b(?:korean|vietnamese)\b|(?<!biên )dịch(?! vụ)|번역|한국어|베트남어|tiếng việt"
                         r"|tiếng hàn", re.IGNORECASE)
# only the object particles: 의/와/과 also end nouns (정의, 결과, 초과)
_KO_OPEN_PARTICLE = re.compile(r"[\uac00-\ud7a3](?:을|를)$")
_KO_OPEN_END = re.compile(r"(?:^|\s)(?:및|또는|혹은|그리고|하지만|그러나)$")
# a source that itself ends on a connective ("Replace with", "and") licenses one in the output
_EN_OPEN_END = re.compile(r"\b(?:and|or|but|of|to|with|for|from|by|in|on|at|as|the|a|an|than|if|that)\W*$",
                          re.IGNORECASE)
_SENT_SPLIT = re.compile(r"(?<=[.!?。！？])\s+|\n+")
# a word is a run of one script: "crtkill과" is a copied command and a Korean particle
_LATIN_LETTERS = "A-Za-z\u00c0-\u024f\u1e00-\u1eff"
_WORD = re.compile(rf"[{_LATIN_LETTERS}]+|[^\W\d_{_LATIN_LETTERS}]+")


# -- helpers ----------------------------------------------------------------------------------------------
LOOP_MIN = 6   # a chunk of at least this many characters written 3+ times in a row is a loop


def char_loop(text: str) -> str | None:
    """The chunk of the first loop in `text`: what `re.search(r"(.{6,}?)\\1{2,}", text, re.DOTALL)` gives as
    group 1 (leftmost start, then shortest chunk), without that pattern's quadratic backtracking (0.8 ms
    for a 200-character answer). A chunk of length L at a repeats at a + L and a + 2L, so its first
    LOOP_MIN characters occur at all three: only starts whose LOOP_MIN-gram occurs 3+ times are tried,
    with the periods to its later occurrences."""
    n, k = len(text), LOOP_MIN
    if n < 3 * k:
        return None
    where: dict[str, list[int]] = {}
    for i in range(n - k + 1):
        where.setdefault(text[i:i + k], []).append(i)
    for a in range(n - 3 * k + 1):
        at = where[text[a:a + k]]
        if len(at) < 3:
            continue
        seen = set(at)
        for b in at[bisect_left(at, a + k):]:
            size = b - a
            if a + 3 * size > n:
                break
            if b + size in seen and text[a:b] == text[b:b + size] == text[b + size:b + 2 * size]:
                return text[a:b]
    return None


@lru_cache(maxsize=4096)   # english_left and wrong_language both ask, for the source and the output
def _plain(text: str) -> str:
    """Text without protected spans: URLs, code, options and tags say nothing about the language. A number
    stays a digit, so a word glued to one ("FAT32", "W95") still reads as an identifier."""
    return plain_text(text, number="0")


def _ends_on_span(text: str, numbers: bool = True) -> bool:
    """Whether the text ends with a protected span (a plain number counts unless `numbers` is false)."""
    spans = span_matches(text)
    return bool(spans) and spans[-1][2] >= len(text.rstrip()) and (numbers or spans[-1][0] != "number")


def _is_hangul(c: str) -> bool:
    return "\uac00" <= c <= "\ud7a3" or "\u1100" <= c <= "\u11ff" or "\u3130" <= c <= "\u318f"


def _is_kana(c: str) -> bool:
    return "\u3040" <= c <= "\u30ff"


def _is_han(c: str) -> bool:
    return "\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf"


def _is_latin(c: str) -> bool:
    return c.isalpha() and (c < "\u0250" or "\u1e00" <= c <= "\u1eff")


def _has_vi_mark(word: str) -> bool:
    """A Latin letter with a Vietnamese diacritic, or đ. Only Latin letters count: Hangul syllables also
    decompose under NFD, into jamo, and are not Vietnamese."""
    return any(c in "đĐ" or (_is_latin(c) and len(unicodedata.normalize("NFD", c)) > 1) for c in word)


def _copied_words(source: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(source)}


def _new_letters(source: str, output: str) -> list[str]:
    """Letters of the output's words that do not occur in the source (names and commands are copied)."""
    copied = _copied_words(source)
    return [c for w in _WORD.findall(output) if w.lower() not in copied for c in w]


# -- checks -----------------------------------------------------------------------------------------------
def check_empty(output: str) -> Reason | None:
    return Reason.GATE_EMPTY if not output.strip() else None


def check_truncated(source: str, output: str, finish_reason: str = "stop", target: str = "") -> Reason | None:
    """Cut off by max_tokens, an unclosed bracket, a source sentence whose translation stops mid-sentence, or
    an ending no complete text has (a Korean object particle or connective, a Vietnamese word cut before
    its vowel). Korean UI labels end in nouns ("CPU 시간 제한 초과", "추가하는 중") and drop the source's
    final period, so a missing period counts only after a real sentence."""
    if finish_reason == "length":
        return Reason.GATE_TRUNCATED
    src, out = _judged_ends(source, output)
    if not src or not out:
        return None
    for o, c in _BRACKETS:
        # a GNU `quote' opener may come back as “ (its closer ' is an apostrophe too often to count),
        # a “ may be closed by a straight quote (translators mix the two), also by a single one where the
        # source quotes 'like this' ("“%s'")
        allowed = src.count(o) - src.count(c) + ((src.count("`") + src.count('"') % 2) if o == "“" else 0)
        closed = out.count(c) + ((out.count('"') + min(out.count("'"), src.count("'") // 2)) if o == "“" else 0)
        if out.count(o) - closed > max(0, allowed):
            return Reason.GATE_TRUNCATED
    # A source sentence (not a short label) that ends with punctuation: the output must end a sentence too;
    # Korean predicate endings (-다, -요, -까, -죠) close one without a period. After a placeholder or an
    # option ("Tác giả: %s", "... Bỏ qua cờ --debug") translators drop the period most.
    # Where the omission model reads this as one of its features, it weighs it with the rest: Korean and
    # Vietnamese UI messages often drop the period ("플래그가 틀릴 수 있음", "... hay không").
    if _sentence_unclosed(src, out, target) and target not in omission_model():
        return Reason.GATE_TRUNCATED
    last = _TOKEN_END.search(out)
    if last and src[-1].isalnum():
        # a word copied from the source, cut ("부적절한 Re" for RejectMessage, "Kerb" for Kerberos); not an
        # inflection ("bytes" -> "byte", "dumped" -> "dump") or a compound's head ("slabinfo" -> "slab")
        word = last.group(0)
        src_tokens = set(_TOKEN_ANY.findall(src))
        if word not in src_tokens and any(t.startswith(word) and t[len(word):].lower() not in _EN_SUFFIXES
                                           and not _english(t[len(word):]) for t in src_tokens):
            return Reason.GATE_TRUNCATED
    # a Korean particle after a copied word, number or placeholder: "dselect에", "%s의", "'%s'를"
    if _KO_PARTICLE_AFTER_COPY.search(out) and not _EN_OPEN_END.search(src):
        return Reason.GATE_TRUNCATED
    # Korean object particles and connectives cannot end a sentence, a title or a label ("파일을", "A 또는")
    if _EN_OPEN_END.search(src):
        return None
    if _KO_OPEN_PARTICLE.search(out) or _KO_OPEN_END.search(out):
        return Reason.GATE_TRUNCATED
    # an opening quote or bracket, a colon, comma or dash where the source ends otherwise: the text went on
    if out[-1] in _OPENERS and src[-1] not in _OPENERS + "`'\"":
        return Reason.GATE_TRUNCATED
    words = _WORD.findall(out) if out[-1].isalpha() else []
    copied = _copied_words(src)
    if words and not {words[-1].lower(), words[-1].lower() + "s", words[-1].lower() + "es"} & copied \
            and _VI_SHAPED.fullmatch(unicodedata.normalize("NFD", words[-1].lower())) \
            and words[-1][1:] == words[-1][1:].lower() and words[-1] != words[-1].upper() \
            and any(map(_has_vi_mark, words)) \
            and not vi_syllable_ok(words[-1]):
        return Reason.GATE_TRUNCATED
    return None


def _judged_ends(source: str, output: str) -> tuple[str, str]:
    """Both texts as their ends are judged: trailing space stripped, and a decoration or emoticon the
    translator added after the end (`_TRAILER`) dropped unless the source has one too."""
    src, out = source.rstrip(), output.rstrip()
    if not _TRAILER.search(src):
        out = _TRAILER.sub("", out) or out
    return src, out


def _sentence_unclosed(src: str, out: str, target: str) -> bool:
    """A source sentence (not a short label) ends with punctuation and the output ends no sentence; Korean
    predicate endings (-다, -요, -까, -죠) close one without a period, and so does a placeholder or option."""
    return bool(src and out) and src[-1] in SENTENCE_END \
        and len(src.split()) >= MIN_SENTENCE_WORDS_BY_LANG.get(target, MIN_SENTENCE_WORDS) \
        and out[-1] not in SENTENCE_END + ":)]}>\"'”’»」다요까죠" and not _ends_on_span(out, numbers=False)


# What a translator may add after the end of a text: an emoticon ("Bạn thua. :(" for "You lose!") or a run of
# decoration ("... (đúng) •••" where the source opened with "***"); the text is judged without it.
_TRAILER = re.compile(r"(?:\s+[:;]-?[()DPp]|\s*[•*=~#]{2,})\s*$")
# (a colon is no opener: "Unable to invoke" -> "다음을 실행할 수 없습니다:", the list follows elsewhere)
_OPENERS = "([{<“‘«「『,-–—"
_EN_SUFFIXES = frozenset("s es ed d ing er ers ly".split())
_TOKEN_END = re.compile(r"(?<![\w%])[A-Za-z][A-Za-z0-9_]*$")
_TOKEN_ANY = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_KO_PARTICLE_AFTER_COPY = re.compile(
    r"(?<=[A-Za-z0-9'\"’”)\]>])\s?(?:에서|에게|으로|에|의|와|과|로|을|를|은|는|이|가)$")
# Vietnamese spelling (Đoàn Thiện Thuật, Ngữ âm tiếng Việt): onsets, and what may close a syllable
# one syllable's shape (NFD), consonants around one vowel group, in Vietnamese letters (no f, j, w, z): longer
# or foreign words ("stateoverride") are not judged
_VI_SHAPED = re.compile(r"[bcdđghklmnpqrstvx]*[aăâeêioôơuưy\u0300-\u0323]*[cghmnpt]*")
_VI_ONSET = re.compile(r"^(?:ngh|gh|ng|nh|ch|tr|th|kh|ph|gi|qu|[bcdđghklmnprstvx])?")
_VI_CODA_OK = re.compile(r"(?:[aăâeêioôơuưy]|c|ch|m|n|ng|nh|p|t)$")


def vi_syllable_ok(word: str) -> bool:
    """Whether a lower-case Latin word can be a written Vietnamese syllable: a vowel after the onset, a legal
    last letter (c, ch, m, n, ng, nh, p, t or a vowel), no ă/â and no iê/yê/uô/ươ left without the sound
    that must follow them, and a stop final (p, t, c, ch) only under the sắc or nặng tone. A word cut
    while being written ("rấ" for "rất", "đượ", "k") fails."""
    w = word.lower()
    base = _untoned(w)
    rhyme = _VI_ONSET.sub("", base, count=1)
    if base.startswith("gi") and not re.match("[aăâeêioôơuưy]", rhyme):
        rhyme = base[1:]                                    # "gì", "gìn", "lô-gíc": g + i...
    if not rhyme or not re.match("[aăâeêioôơuưy]", rhyme) or not _VI_CODA_OK.search(rhyme):
        return False
    if re.search(r"(?:[ăâ]|iê|yê|uô|ươ)$", rhyme):
        return False
    if re.search(r"(?:p|t|c|ch)$", rhyme):
        tones = set(unicodedata.normalize("NFD", w)) & {"\u0300", "\u0303", "\u0309"}
        return not tones
    return True


_TONES = dict.fromkeys(map(ord, "\u0300\u0301\u0303\u0309\u0323"))   # the five Vietnamese tone marks


def _untoned(word: str) -> str:
    """The word without tone marks, vowel marks kept: "người" -> "ngươi"."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", word).translate(_TONES))


def check_preamble(source: str, output: str) -> Reason | None:
    if _PREAMBLE_ALWAYS.search(output) and not _PREAMBLE_ALWAYS.search(source):
        return Reason.GATE_PREAMBLE
    if _OUT_INTERJECTION.search(output) and not _SRC_AFFIRMATIVE.search(source) \
            and not _OUT_INTERJECTION.search(source):
        return Reason.GATE_PREAMBLE
    if _APPENDED_NOTE.search(output) and not _SRC_NOTE.search(source):
        return Reason.GATE_PREAMBLE
    # a first line or clause that talks about the translation or names the language
    head = re.split(r"\n|[:：](?=\s)", output.strip(), maxsplit=1)
    if len(head) > 1 and len(head[0]) <= 80 and _META_WORDS.search(head[0]) and not _META_WORDS.search(source):
        return Reason.GATE_PREAMBLE
    return None


def check_wrong_language(source: str, output: str, target: str) -> Reason | None:
    """Decided by script on NFC text, over the letters the output did not copy from the source; langdetect
    only for long Latin-script texts, where it is reliable."""
    letters = [c for c in output if c.isalpha()]
    if not letters:
        return None
    n = len(letters)
    kana = sum(map(_is_kana, letters)) / n
    han = sum(map(_is_han, letters)) / n
    new = _new_letters(source, output)
    if target == "ko":
        if kana > 0.02 or han > MAX_FOREIGN_CJK_SHARE:
            return Reason.GATE_WRONG_LANGUAGE
        if new and sum(map(_is_hangul, new)) / len(new) < MIN_HANGUL_SHARE:
            return Reason.GATE_WRONG_LANGUAGE
        return None
    if target not in ("ja", "zh") and kana + han > MAX_FOREIGN_CJK_SHARE:
        return Reason.GATE_WRONG_LANGUAGE
    if target in ("ja", "zh", "ko"):
        return None
    if sum(map(_is_hangul, letters)) / n > MAX_HANGUL_IN_LATIN:
        return Reason.GATE_WRONG_LANGUAGE
    if target == "vi":
        copied = _copied_words(source)
        words = [w for w in _WORD.findall(output) if w.lower() not in copied]
        if len(words) >= MIN_VI_WORDS_FOR_DIACRITICS \
                and sum(map(_has_vi_mark, words)) / len(words) < MIN_VI_DIACRITIC_WORD_SHARE:
            return Reason.GATE_WRONG_LANGUAGE
    if n >= MIN_LETTERS_FOR_LANGDETECT:
        top = top_language(output)
        if top is not None and top[0] != target and top[1] > 0.9:
            return Reason.GATE_WRONG_LANGUAGE
    return None


# -- English vocabulary ---------------------------------------------------------------------------------
# The ASCII entries of SCOWL's size-50 American English list (Debian package wamerican 2020.12.07-2,
# /usr/share/dict/american-english; licence in en_words.COPYRIGHT): lower-case ones of three letters or more
# are common words, capitalised ones proper names ("James", "Randy", "Smith"). Identifiers ("stdin",
# "fdopen", "nsNET") and most surnames ("Meyering", "Haible") are in neither.
EN_WORDS_FILE = "en_words.txt.gz"
# two-letter words that are English for sure (the list also has abbreviations and letters: "cs", "ms", "ls")
EN_SHORT_WORDS = frozenset("am an as at be by do go he if in is it me my no of on or so to up us we".split())
# Keys are named as printed on the keyboard; translators keep them ("Home", "Enter", "Backspace").
KEY_NAMES = frozenset("Home End Enter Return Delete Del Backspace Tab Insert Ins Space Esc Escape Ctrl Alt "
                      "Shift Meta PgUp PgDn PageUp PageDown".split())
# A character or key named in words is translated as the character or the key cap: "Colon" -> ":", "Dollar sign"
# -> "$", "Function key 12" -> "F12", "Escape" -> "Esc" (keyboard and character-map menus).
SYMBOL_NAME_WORDS = frozenset(
    "colon semicolon comma period full stop dot caret circumflex tilde asterisk star plus minus hyphen dash equal "
    "equals sign slash backslash pipe vertical bar ampersand at dollar percent hash number pound question "
    "exclamation mark apostrophe quote quotation double single left right open close opening closing brace "
    "bracket parenthesis paren curly square angle less greater than underscore underline understrike grave "
    "accent backtick back tick key space".split())
_KEY_CAP = re.compile(r"(?i:F\d{1,2}|Esc|Del|Ins|Tab|Ctrl|Alt|Shift|Meta|PgUp|PgDn|Home|End|Enter|BkSp|Space)")
_FUNCTION_KEY = re.compile(r"(?i:function\s+key\s+(\d{1,2}))")
KEY_CAPS = {"escape": "esc", "delete": "del", "insert": "ins", "control": "ctrl", "page up": "pgup",
            "page down": "pgdn", "backspace": "bksp"}


def names_symbol(source: str, output: str) -> bool:
    """The output is the character or key cap the source names ("Colon" -> ":", "Function key 3" -> "F3")."""
    src, out = " ".join(source.split()).strip().lower(), output.strip()
    if not src or not out or len(out) > 4:
        return False
    if not any(c.isalnum() for c in out):
        return len(out) == 1 and set(src.split()) <= SYMBOL_NAME_WORDS
    m = _FUNCTION_KEY.fullmatch(src)
    if m:
        return out.lower() == f"f{m.group(1)}"
    return bool(_KEY_CAP.fullmatch(out)) and KEY_CAPS.get(src) == out.lower()


# A lone word this short ("Yes", "All", "in", "us") is as often kept (a prompt answer, a column) as translated
MIN_LONE_WORD = 4
_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9_'’-]*")


@lru_cache(maxsize=1)
def english_lexicon() -> tuple[frozenset[str], frozenset[str]]:
    """(common words, proper names), read once from the package data."""
    with (files("polycap.transforms") / EN_WORDS_FILE).open("rb") as raw, gzip.open(raw, "rt") as f:
        entries = [line.strip() for line in f if line.strip()]
    return frozenset(w for w in entries if w.islower()), frozenset(w for w in entries if not w.islower())


def _english(word: str) -> bool:
    w = word.lower()
    return w in EN_SHORT_WORDS if len(w) < 3 else w in english_lexicon()[0]


def _title(word: str) -> bool:
    return word[:1].isupper() and word[1:] == word[1:].lower() and word[1:] != word[1:].upper()


def _name_part(word: str) -> bool:
    """A capitalised word that may be part of a person's name: a proper name, or no English word."""
    return _title(word) and (word in english_lexicon()[1] or not _english(word))


def _source_words(source: str) -> list[tuple[str, int, int]]:
    """(word, start, end) of the source's words, hyphenated ones split ("run-level"); words glued to syntax
    (`a|b`, `[=x]`, `exit=`, `x_y`, `nano2`) and to a dot inside a token (`help.txt`, `os.path`, file names and
    dotted identifiers) are values, keys and identifiers, not words."""
    words = []
    for m in _TOKEN.finditer(source):
        tok = m.group(0)
        before, after = source[max(0, m.start() - 1):m.start()], source[m.end():m.end() + 1]
        dotted = (after == "." and source[m.end() + 1:m.end() + 2].isalnum()) \
            or (before == "." and source[max(0, m.start() - 2):m.start() - 1].isalnum())
        if re.search(r"[\d_]", tok) or before in ("|", "=", "_") or after in ("|", "=", "_", "[") or dotted:
            continue
        pos = m.start()
        for part in re.split(r"['’-]", tok):
            if part:
                words.append((part, pos, pos + len(part)))
            pos += len(part) + 1
    return words


def _name_runs(source: str, words: list[tuple[str, int, int]]) -> set[int]:
    """Indices of words inside a person's name: a run of capitalised words separated by spaces (an initial's
    period allowed) that starts and ends on a name part ("Bruno Haible", "Randy Smith", "H. Peter Anvin";
    not "Go To Line", "Free Software Foundation")."""
    out: set[int] = set()
    i = 0
    while i < len(words):
        j = i
        while j + 1 < len(words) and _title(words[j + 1][0]) and _title(words[i][0]) \
                and re.fullmatch(r"\.?\s+", source[words[j][2]:words[j + 1][1]]):
            j += 1
        run = [w for w, _, _ in words[i:j + 1]]
        if j > i and (_name_part(run[0]) or len(run[0]) == 1) and _name_part(run[-1]):
            out.update(range(i, j + 1))
        i = j + 1
    return out


def _translatable(source: str) -> bool:
    """Whether the source has a word a translator translates: an English word ("Mark Set", "FAILED",
    "run-level"), not a name ("Bruno Haible", "Randy Smith"), an identifier ("stdin", "nsNET", "x_y",
    "InstVer"), an acronym missing from the vocabulary ("PID", "TTY"), or a key name ("Home")."""
    words = _source_words(source)
    names = _name_runs(source, words)
    for i, (w, _, _) in enumerate(words):
        if i in names or w in KEY_NAMES or not _english(w) or (len(words) == 1 and len(w) < MIN_LONE_WORD):
            continue
        if w.isupper() and (len(w) < 3 or len(words) == 1 or not all(x.isupper() for x, _, _ in words)):
            continue        # an acronym ("Linux RAID", "EFI"), unless the whole text is capitals ("NO SPACE")
        if not w.isupper() and w[1:] != w[1:].lower():      # CamelCase: an identifier
            continue
        return True
    return False


def check_english_left(source: str, output: str, target: str) -> Reason | None:
    """The source copied (a text with something to translate), too many English function words, or an
    output that only carries what it copied (placeholders, options, names: "-y, --no-first" for "-y,
    --no-first  skips first line of output") while the source words it left out are to be translated."""
    if target == "en":
        return None
    all_words = _WORD.findall(output)
    hits = sum(1 for w in all_words if w.isascii() and w.lower() in EN_FUNCTION_WORDS)
    if all_words and hits >= MIN_EN_FUNCTION_COUNT and hits / len(all_words) > MAX_EN_FUNCTION_SHARE:
        return Reason.GATE_ENGLISH_LEFT
    if " ".join(output.split()).lower() == " ".join(source.split()).lower():
        return Reason.GATE_ENGLISH_LEFT if _translatable(source) else None
    copied = _copied_words(source)
    kept = {w.lower() for w in all_words}
    if kept <= copied and _translatable(" ".join(w for w, _, _ in _source_words(source) if w.lower() not in kept)):
        return Reason.GATE_ENGLISH_LEFT
    return None


def _bucket(target: str, n: int) -> tuple[float, float] | None:
    found = None
    for lo_n, lo, hi in LENGTH_BUCKETS.get(target, DEFAULT_BUCKETS):
        if n >= lo_n:
            found = (lo, hi)
    return found


def _size(text: str) -> int:
    """Characters with runs of whitespace counted once: column padding in help texts is layout."""
    return len(" ".join(text.split()))


def length_log_ratio(source: str, output: str) -> float | None:
    """log(output characters / source characters), whitespace collapsed; None for an empty source."""
    s, o = _size(source), _size(output)
    return math.log(max(o, 0.5) / s) if s else None


def check_length_ratio(source: str, output: str, target: str) -> Reason | None:
    """Output length against the bounds fitted for English sources; other sources (a Chinese turn in a
    multilingual dataset) have no fitted bounds and are not judged."""
    letters = [c for c in source if c.isalpha()]
    if not letters or sum(map(_is_latin, letters)) < 0.5 * len(letters):
        return None
    bounds = _bucket(target, _size(source))
    r = length_log_ratio(source, output)
    if bounds is None or r is None:
        return None
    # where an omission model exists it judges short outputs of labels and short sentences
    low = -math.inf if target in OMISSION_LANGS and _size(source) < MIN_SENTENCE_CHARS else bounds[0]
    if r > bounds[1]:
        # the source's own words added in brackets after their translation ("문자열(STRING)",
        # "브루노 헤이블(Bruno Haible)") are a gloss, not length the translation has
        bare = _GLOSS.sub(lambda m: "" if _is_gloss(m.group(1), source) else m.group(0), output)
        r = length_log_ratio(source, bare) if bare != output and bare.strip() else r
    if r is not None and r < low:
        # too short and the sentence left open: a cut
        src, out = source.rstrip(), output.rstrip()
        return Reason.GATE_TRUNCATED if _sentence_unclosed(src, out, target) else Reason.GATE_LENGTH_RATIO
    return Reason.GATE_LENGTH_RATIO if r is None or not low <= r <= bounds[1] else None


_GLOSS = re.compile(r"[ \t]?\(([^()]+)\)")


def _is_gloss(text: str, source: str) -> bool:
    """A bracketed text that copies part of the source, with a letter in it."""
    t = " ".join(text.split()).lower()
    return any(c.isalpha() for c in t) and t in " ".join(source.split()).lower()


# -- where a translation may end ----------------------------------------------------------------------
_END_UNIT = {"ko": re.compile("[\uac00-\ud7a3]+"), "vi": re.compile(f"[{_LATIN_LETTERS}]+")}
_LAST_UNIT = {lang: re.compile(f"(?:{p.pattern})$") for lang, p in _END_UNIT.items()}
_NEXT_CHAR = re.compile(r"[ \t]*(.)", re.DOTALL)
_CLAUSE_CLOSE = frozenset(".,:;!?)]}\"'”’…。»>\n")
MIN_WORD_EVIDENCE = 24      # occurrences (whole + started) a stored word needs; fewer say nothing


def word_end_counts(texts: Iterable[str], lang: str) -> dict[str, list[int]]:
    """{word: [whole, clause ends, longer words started]} over human texts in `lang` (see WORD_ENDS_FILE);
    protected spans are removed first and count as neither an end nor a word."""
    counts: dict[str, list[int]] = {}
    unit = _END_UNIT[lang]
    for text in texts:
        plain = plain_text(text, number=" \x00 ", span=" \x00 ")
        for m in unit.finditer(plain):
            word = m.group(0).lower()
            c = counts.setdefault(word, [0, 0, 0])
            c[0] += 1
            nxt = _NEXT_CHAR.match(plain, m.end())
            c[1] += nxt is None or nxt.group(1) in _CLAUSE_CLOSE
            for i in range(1, len(word)):
                counts.setdefault(word[:i], [0, 0, 0])[2] += 1
    return counts


@lru_cache(maxsize=1)
def word_ends() -> dict[str, dict[str, tuple[int, int, int]]]:
    """The fitted counts, read once from the package data: {language: {word: (whole, ends, started)}}."""
    with (files("polycap.transforms") / WORD_ENDS_FILE).open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        data = json.load(f)
    return {lang: {w: (c[0], c[1], c[2]) for w, c in words.items()} for lang, words in data["counts"].items()}


# -- omission: a fitted model of what a complete translation looks like ------------------------------------
# `omission.json.gz` (package data, fitted by `python -m bench.translate_gates_fit` on the dev catalogs and the
# even NTREX lines, like the word ends) holds per target language: a translation table of English content
# words (`coverage.fit_lexicon`) with each word's out-of-fold coverage p (how often a human translation
# carries one of its translations), the median log length ratio per source-length bucket, and the weights of
# a logistic score over OMISSION_FEATURES fitted on human translations against the same texts cut to 40 %;
# the threshold is the score that rejects the fitted false-reject budget of the human translations. For
# these languages it replaces a lower bound on the length ratio: a short output that carries the
# translation of every word the table knows is a terse translation ("인증 실패" for "authentication
# failure"), a short one that lacks them is a cut.
OMISSION_FILE = "omission.json.gz"
OMISSION_FEATURES = ("uncovered", "covered", "uncovered_share", "ratio", "ratio_x_uncovered", "ratio_x_covered",
                     "all_covered", "no_known_terms", "last_word_whole", "last_word_clause_end", "last_word_unknown",
                     "short_source", "ratio_x_short", "all_covered_x_short", "uncovered_first_half",
                     "expected_ratio", "expected_ratio_x_short", "unseen_ending", "sentence_unclosed", "bias")
OMISSION_LANGS = ("ko", "vi")
MAX_COVERAGE_P = 0.97       # a word's evidence is capped: no table entry is certain
SHORT_SOURCE = 16           # characters: labels, where the ratio varies most
# Shorter sources are abbreviations and column heads ("bo" -> "출", "cur" -> "현"): their length says nothing,
# as for LENGTH_BUCKETS, and they are not judged.
MIN_OMISSION_SOURCE = 4


@lru_cache(maxsize=1)
def omission_model() -> dict[str, dict]:
    """The fitted model, read once from the package data ({} when the file is absent, as while fitting)."""
    try:
        with (files("polycap.transforms") / OMISSION_FILE).open("rb") as raw, \
                gzip.open(raw, "rt", encoding="utf-8") as f:
            return dict(json.load(f)["languages"])
    except FileNotFoundError:
        return {}


def _last_word_features(source: str, output: str, target: str) -> tuple[float, float, float]:
    """log share of whole occurrences and of clause ends of the output's last word in human text (see
    WORD_ENDS_FILE), and 1.0 for a word human text never had; zeros where the end is a span, a copied word
    or an upper-case Latin word."""
    if target not in _LAST_UNIT or _ends_on_span(output):
        return 0.0, 0.0, 0.0
    m = _LAST_UNIT[target].search(_plain(output).rstrip())
    if not m:
        return 0.0, 0.0, 0.0
    word = m.group(0)
    if word.lower() in _copied_words(source) or (word.isascii() and not word.islower()):
        return 0.0, 0.0, 0.0
    counts = word_ends().get(target, {}).get(word.lower())
    if counts is None:
        return 0.0, 0.0, 1.0
    whole, ends, started = counts
    return math.log((whole + 0.5) / (whole + started + 1)), math.log((ends + 0.5) / (whole + 1)), 0.0


def omission_features(source: str, output: str, target: str, lexicon: dict[str, list[str]],
                      coverage_p: dict[str, float], medians: list[tuple[int, float]],
                      length: tuple[dict, dict[str, int]], endings: frozenset[str]) -> list[float]:
    """OMISSION_FEATURES of one pair: the evidence (-log(1 - p)) of the known source words the output
    lacks and of those it carries, the share it lacks, the log length ratio less the human median for a
    source this long (capped at +1), that ratio (when negative) times the lacking and times the carried
    evidence, whether every known word is carried, whether no word is known, the
    last-word features, whether the source is short, and a constant."""
    known, missing = uncovered(source, output, target, lexicon)
    def weight(t: str) -> float:
        return -math.log(1 - min(coverage_p.get(t, 0.5), MAX_COVERAGE_P))
    lacking = sum(map(weight, missing))
    carried = sum(weight(t) for t in known if t not in missing)
    # where in the source the lacking words are: a cut loses the end of a Vietnamese translation (the end of
    # the English) and the end of a Korean one (verb-final: often the start of the English)
    half = len(known) / 2
    lacking_first = sum(weight(t) for i, t in enumerate(known) if i < half and t in missing)
    n = _size(source)
    median = next((m for lo, m in reversed(medians) if n >= lo), 0.0)
    r = min((length_log_ratio(source, output) or 0.0) - median, 1.0)
    whole, clause_end, unknown = _last_word_features(source, output, target)
    short = n < SHORT_SOURCE
    end = last_ending(output, target)
    unseen = end is not None and end not in endings and end not in _copied_words(source)
    expected = max(-3.0, min(1.0, math.log(max(_size(output), 0.5) / predicted_length(source, *length))))
    src, out = _judged_ends(source, output)
    return [lacking, carried, len(missing) / len(known) if known else 0.0, r, min(r, 0.0) * lacking,
            min(r, 0.0) * carried, float(bool(known) and not missing), float(not known), whole, clause_end,
            unknown, float(short), r * short, float(short and bool(known) and not missing), lacking_first,
            expected, min(expected, 0.0) * short, float(unseen), float(_sentence_unclosed(src, out, target)), 1.0]


@lru_cache(maxsize=4)
def _lexicon(target: str) -> tuple[dict[str, list[str]], dict[str, float], tuple[dict, dict[str, int]],
                                   frozenset[str]]:
    model = omission_model()[target]
    length = model["length"]
    return ({t: e[0] for t, e in model["lexicon"].items()}, {t: e[1] for t, e in model["lexicon"].items()},
            (length, {w: j + 2 for j, w in enumerate(length["vocab"])}), frozenset(model["endings"]))


def omission_score(source: str, output: str, target: str) -> tuple[float, float] | None:
    """(score, threshold) of the fitted omission model; None where it does not judge: no model for the
    target, or a source that is not mostly Latin letters (the model is fitted on English sources)."""
    model = omission_model().get(target)
    letters = [c for c in source if c.isalpha()]
    if model is None or _size(source) < MIN_OMISSION_SOURCE or sum(map(_is_latin, letters)) < 0.5 * len(letters):
        return None
    if model["features"] != list(OMISSION_FEATURES):
        raise RuntimeError(f"{OMISSION_FILE} was fitted for other features than this code computes: "
                           "refit it with `python -m bench.translate_gates_fit`")
    lexicon, coverage_p, length, endings = _lexicon(target)
    x = omission_features(source, output, target, lexicon, coverage_p, [tuple(m) for m in model["medians"]], length,
                          endings)
    return sum(w * v for w, v in zip(model["weights"], x)), model["threshold"]


def omission_detail(source: str, output: str, target: str) -> str:
    """What the omission model saw: the length ratio and the known source words the output lacks."""
    missing = uncovered(source, output, target, _lexicon(target)[0])[1]
    r = length_log_ratio(source, output) or 0.0
    return f"omission: length ratio {math.exp(r):.2f}, lacks {missing[:4]}"


def check_omission(source: str, output: str, target: str) -> Reason | None:
    """Shorter than a complete translation, by the fitted omission model: a cut or a dropped clause."""
    scored = omission_score(source, output, target)
    return Reason.GATE_TRUNCATED if scored is not None and scored[0] > scored[1] else None


def check_spans(source: str, output: str) -> Reason | None:
    return Reason.GATE_SPANS_CHANGED if compare_spans(source, output) else None


def _sentences(text: str) -> list[str]:
    return [re.sub(r"\W+", " ", s).strip().lower() for s in _SENT_SPLIT.split(text)]


def repeated_tail(text: str) -> float:
    """Share of the text (spaces collapsed, lowercase) taken by its longest word-aligned suffix that also
    occurs, without overlap, earlier on: 0.5 for a text written twice, with or without punctuation."""
    s = " ".join(text.split()).lower()
    n = len(s)
    lo, hi = 0, n // 2
    while lo < hi:              # the property is monotone in the suffix length: binary search
        mid = (lo + hi + 1) // 2
        if s.find(s[n - mid:], 0, n - mid) >= 0:
            lo = mid
        else:
            hi = mid - 1
    tail = s[n - lo:]
    if lo and n - lo > 0 and s[n - lo - 1].isalnum() and tail[:1].isalnum():
        tail = tail.split(" ", 1)[1] if " " in tail else ""     # starts inside a word: "ngưng" ends in "ng"
    tail = tail.strip()
    return len(tail) / max(1, n) if any(c.isalpha() for c in tail) else 0.0


MIN_REPEATED_TAIL = 0.3     # human references stay below it (bench/results/translate_gates_catalogs.json)
MIN_TAIL_GAIN = 0.15        # ... or within this of the source's own repeated tail ("-f FILE --file=FILE")


def check_repetition(source: str, output: str) -> Reason | None:
    """A sentence repeats more often than in the source, the text ends by repeating a large part of
    itself, or a chunk loops 3+ times."""
    src_counts = [s for s in _sentences(source) if len(s) >= 8]
    src_max = max((src_counts.count(s) for s in src_counts), default=1)
    out_sents = [s for s in _sentences(output) if len(s) >= 8]
    if out_sents and max(out_sents.count(s) for s in out_sents) > max(1, src_max):
        return Reason.GATE_REPETITION
    tail = repeated_tail(output)
    if tail >= MIN_REPEATED_TAIL and tail > repeated_tail(source) + MIN_TAIL_GAIN:
        return Reason.GATE_REPETITION
    loop = char_loop(output)
    if loop is not None and len(loop.strip()) >= 4 and char_loop(source) is None:
        return Reason.GATE_REPETITION
    return None


GateFn = Callable[[str, str, str, str], "Reason | None"]
# Cheap and unambiguous gates first, so a failure names the most specific reason.
GATES: list[tuple[str, GateFn]] = [
    ("empty", lambda s, o, t, f: check_empty(o)),
    ("truncated", lambda s, o, t, f: check_truncated(s, o, f) if f == "length" else None),
    ("preamble", lambda s, o, t, f: check_preamble(s, o)),
    ("english_left", lambda s, o, t, f: check_english_left(_plain(s), _plain(o), t)),
    ("wrong_language", lambda s, o, t, f: check_wrong_language(_plain(s), _plain(o), t)),
    ("spans", lambda s, o, t, f: check_spans(s, o)),
    ("repetition", lambda s, o, t, f: check_repetition(s, o)),
    ("ends_mid_sentence", lambda s, o, t, f: check_truncated(s, o, f, t)),
    ("length_ratio", lambda s, o, t, f: check_length_ratio(s, o, t)),
    ("omission", lambda s, o, t, f: check_omission(s, o, t)),
]


# What a named character or key (`names_symbol`) still goes through: emptiness, max_tokens and its numbers.
_CONTENT_GATES = frozenset(name for name, _ in GATES) - {"empty", "truncated", "spans"}
_HOTKEY = {c: re.compile(rf"(?<![\w{re.escape(c)}]){re.escape(c)}(?=\w)|(?<=\w){re.escape(c)}(?=\w)")
           for c in "^&_"}
# In the source a GTK mnemonic underscore starts a word ("_Undo", "Save _As"); one inside a word is an
# identifier's ("io_channel"), never a marker.
_HOTKEY_IN_SOURCE = {**_HOTKEY, "_": re.compile(r"(?<![\w_])_(?=[^\W\d_])")}
# Korean, Chinese and Japanese menus put the hotkey after the label in brackets: "건너뛰기(&S)", "입력 취소(_U)"
_APPENDED_HOTKEY = re.compile(r"[ \t]?\(([\^&_]?)([A-Za-z0-9])\)")


def _without_hotkey(source: str, output: str) -> tuple[str, str]:
    """Both texts without a menu's hotkey marker ("^Install" -> "Cà^i", "I^nformation" -> "Thông ti^n",
    "&Open" -> "&Mở", "_Add" -> "Thê_m"), where each has exactly one, before a letter: the marker is no
    character of the word; or where the source has one and the output instead appends that key in brackets
    ("&Skip" -> "건너뛰기(&S)", "Ch&own" -> "소유자 변경 (&O)")."""
    for c, pat in _HOTKEY_IN_SOURCE.items():
        found = list(pat.finditer(source))
        if len(found) != 1:
            continue
        key = source[found[0].end()].lower()
        appended = [m for m in _APPENDED_HOTKEY.finditer(output)
                    if m.group(1) in ("", c) and m.group(2).lower() == key]
        if len(appended) == 1:
            rest = output[:appended[0].start()] + output[appended[0].end():]
            if not _HOTKEY[c].search(rest):
                return pat.sub("", source), rest
        if len(_HOTKEY[c].findall(output)) == 1:
            return pat.sub("", source), _HOTKEY[c].sub("", output)
    return source, output


# A Korean column heading spaced out to a column's width (균등 배분: "주  소" for 주소, "이  름"): one word.
_SPACED_OUT = re.compile(r"\s*[\uac00-\ud7a3](?:[ \t]{2,}[\uac00-\ud7a3])+\s*")


def normalized(source: str, output: str) -> tuple[str, str]:
    """Both texts as the gates read them: NFC (a Hangul syllable is one letter whatever form the model
    emitted), without a menu's hotkey marker, a spaced-out Korean heading as its word."""
    source, output = _without_hotkey(unicodedata.normalize("NFC", source), unicodedata.normalize("NFC", output))
    if _SPACED_OUT.fullmatch(output):
        output = "".join(output.split())
    return source, output


def first_failure(source: str, output: str, target: str, finish_reason: str = "stop",
                  skip: frozenset[str] = frozenset()) -> tuple[Reason, str] | None:
    """(reason, detail) of the first gate that fails on the restored output, or None if all pass; gates
    named in `skip` are not run (the omission fit judges what the other gates leave). Texts are read
    `normalized`."""
    source, output = normalized(source, output)
    if names_symbol(source, output):
        skip = skip | _CONTENT_GATES      # the character or key itself: only its numbers are compared
    for name, gate in GATES:
        if name in skip:
            continue
        reason = gate(source, output, target, finish_reason)
        if reason is not None:
            detail = compare_spans(source, output) if name == "spans" else name
            if name == "length_ratio":
                r = length_log_ratio(source, output) or 0.0
                detail = f"length ratio {math.exp(r):.2f} ({'too short' if r < 0 else 'too long'})"
            if name == "omission":
                detail = omission_detail(source, output, target)
            return reason, str(detail)
    return None
