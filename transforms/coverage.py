"""Lexical coverage of an English source by a ko/vi translation: a translation table fitted on human pairs."""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable

import numpy as np

from polycap.transforms.protect import plain_text, span_matches

# Words that carry no content of their own, left out of the table (a cut that drops "the" says nothing).
STOP_WORDS = frozenset(
    "the of and to in is are was were be been for with on that this it as at by from an or but not "
    "have has had will would can could should there their they which who what when where while into "
    "about than then these those its our your his her we you he she them being do does did no any all "
    "some".split())
_EN_WORD = re.compile(r"[A-Za-z]{3,}")
_HANGUL_RUN = re.compile("[\uac00-\ud7a3]+")
_LATIN_RUN = re.compile(r"[A-Za-z\u00c0-\u024f\u1e00-\u1eff]+(?: [A-Za-z\u00c0-\u024f\u1e00-\u1eff]+)*")
_SUFFIXES = ("ing", "ed", "es", "s")

# Fitting (`fit_lexicon`): a source term needs MIN_TERM_PAIRS pairs; each of its at most MAX_ALTERNATIVES
# translations must occur in at least MIN_ALT_SHARE of its pairs' outputs (divided by the alternative's
# rank) and in at most MAX_BASE_RATE of the outputs of pairs without the term; a term whose alternatives
# cover less than MIN_COVERAGE of its own pairs is left out.
MIN_TERM_PAIRS = 4
MAX_ALTERNATIVES = 3
MIN_ALT_SHARE = 0.2
MAX_BASE_RATE = 0.1
MIN_COVERAGE = 0.8


def stem(word: str) -> str:
    """Lower case without a plural or verb ending or a final e: "file", "files", "filed", "filing" -> "fil";
    three letters are kept."""
    w = word.lower()
    for suf in _SUFFIXES:
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            w = w[:-len(suf)]
            break
    return w[:-1] if w.endswith("e") and len(w) > 3 else w


def source_terms(source: str) -> list[str]:
    """The source's content words (three letters or more, no stop word, protected spans removed), stemmed,
    each once, in reading order."""
    words = (stem(w) for w in _EN_WORD.findall(plain_text(source)) if w.lower() not in STOP_WORDS)
    return list(dict.fromkeys(words))


def target_keys(output: str, lang: str) -> set[str]:
    """What a translation of a term may be found as: for Korean every run of one to three Hangul syllables
    (particles and endings glue onto words: 파일을, 파일이), otherwise each word and each pair of adjacent
    words, lower case ("tập tin")."""
    text = plain_text(output).lower()
    keys: set[str] = set()
    if lang == "ko":
        for run in _HANGUL_RUN.findall(text):
            keys.update(run[i:i + n] for n in (1, 2, 3) for i in range(len(run) - n + 1))
    else:
        for run in _LATIN_RUN.findall(text):
            words = run.split(" ")
            keys.update(words)
            keys.update(f"{a} {b}" for a, b in zip(words, words[1:]))
    return keys


def _alternatives(rows: list[tuple[set[str], set[str]]], term: str, base: Counter, counts: Counter) -> list[str]:
    """Greedy cover of the term's pairs: each step takes the key found in most still-uncovered outputs,
    penalised by how often it occurs without the term."""
    mine = [keys for terms, keys in rows if term in terms]
    n, others = len(mine), max(1, len(rows) - len(mine))
    left = mine
    alts: list[str] = []
    while left and len(alts) < MAX_ALTERNATIVES:
        best, best_score = None, 0.0
        for key, k in counts.items():
            rate = (base[key] - k) / others
            if k < 2 or k / n < MIN_ALT_SHARE / (len(alts) + 1) or rate > MAX_BASE_RATE:
                continue
            score = sum(key in keys for keys in left) - 3 * rate * len(left)
            # ties go to the longer key, the more specific translation ("파일" over "파" and "일")
            if score > best_score or (score == best_score and best is not None
                                      and (-len(key), key) < (-len(best), best)):
                best, best_score = key, score
        if best is None:
            break
        alts.append(best)
        left = [keys for keys in left if best not in keys]
    return alts if alts and 1 - len(left) / n >= MIN_COVERAGE else []


def fit_lexicon(pairs: Iterable[tuple[str, str]], lang: str) -> dict[str, list[str]]:
    """{source term: translations} from human (source, translation) pairs, deterministic."""
    rows = [(set(source_terms(s)), target_keys(o, lang)) for s, o in pairs]
    n_term: Counter = Counter()
    base: Counter = Counter()
    co: dict[str, Counter] = defaultdict(Counter)
    for terms, keys in rows:
        n_term.update(terms)
        base.update(keys)
    for terms, keys in rows:
        for t in terms:
            if n_term[t] >= MIN_TERM_PAIRS:
                co[t].update(keys)
    table = {}
    for term in sorted(co):
        alts = _alternatives(rows, term, base, co[term])
        if alts:
            table[term] = alts
    return table


def uncovered(source: str, output: str, lang: str, table: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """(terms of the source the table knows, those of them none of whose translations the output has)."""
    known = [t for t in source_terms(source) if t in table]
    if not known:
        return [], []
    if lang == "ko":
        # a key is a run of Hangul syllables: it is one of the output's keys exactly when the text has it
        text = plain_text(output).lower()
        return known, [t for t in known if not any(a in text for a in table[t])]
    keys = target_keys(output, lang)
    return known, [t for t in known if not any(a in keys for a in table[t])]


def fit_coverage(pairs: list[tuple[str, str]], lang: str,
                 folds: int = 2) -> tuple[dict[str, float], dict[str, list[str]], list[dict[str, list[str]]]]:
    """The lexicon with each term's out-of-fold coverage, and a lexicon per fold for out-of-fold features.

    Returns ({term: p}, {term: translations}, [fold lexicons]): p is how often human translations carry one of
    the term's translations, measured on the pairs of each fold with the lexicon fitted on the others
    (add-one smoothed), so that p says what to expect of unseen text, not how well the table fits its own
    pairs. Pair i belongs to fold i % folds."""
    fold_tables = [fit_lexicon([pair for i, pair in enumerate(pairs) if i % folds != k], lang) for k in range(folds)]
    seen: Counter = Counter()
    hit: Counter = Counter()
    for i, (s, o) in enumerate(pairs):
        known, missing = uncovered(s, o, lang, fold_tables[i % folds])
        seen.update(known)
        hit.update(set(known) - set(missing))
    table = fit_lexicon(pairs, lang)
    terms = set(table).union(*fold_tables)
    return {t: round((hit[t] + 1) / (seen[t] + 2), 3) for t in sorted(terms)}, table, fold_tables


# -- expected length ----------------------------------------------------------------------------------------
# A translation's length predicted from its source's words: each of the MAX_LENGTH_WORDS most frequent source
# words has its own number of output characters, any other letter and any other character (digits,
# punctuation) one shared rate, and protected spans count as themselves (they are copied). Fitted by ridge
# least squares (`fit_length`) on human pairs; "to", "the", "a" cost ~0 characters in Korean, "file" two.
MAX_LENGTH_WORDS = 1500
LENGTH_RIDGE = 1.0
_ANY_WORD = re.compile(r"[A-Za-z]+")


def length_row(source: str, vocab: dict[str, int]) -> tuple[dict[int, float], float]:
    """({column: count} of the source's words in `vocab` (column 0: letters of other words, 1: other
    characters), characters of protected spans)."""
    plain = plain_text(source)
    row: dict[int, float] = {}
    letters = 0
    for w in _ANY_WORD.findall(plain):
        j = vocab.get(w.lower())
        if j is None:
            letters += len(w)
        else:
            row[j] = row.get(j, 0.0) + 1.0
    row[0] = float(letters)
    row[1] = float(len(" ".join(plain.split())) - sum(len(w) for w in _ANY_WORD.findall(plain)))
    spans = len(" ".join(source.split())) - len(" ".join(plain.split()))
    return row, float(max(spans, 0))


def fit_length(pairs: list[tuple[str, str]], size: Callable[[str], int]) -> dict:
    """{"vocab": [words], "coef": [per column], "intercept": float} predicting size(output) - span chars."""
    counts: Counter = Counter(w.lower() for s, _ in pairs for w in _ANY_WORD.findall(plain_text(s)))
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_LENGTH_WORDS]]
    vocab = {w: j + 2 for j, w in enumerate(words)}
    x = np.zeros((len(pairs), len(vocab) + 3))
    y = np.zeros(len(pairs))
    for i, (s, o) in enumerate(pairs):
        row, spans = length_row(s, vocab)
        for j, v in row.items():
            x[i, j] = v
        x[i, -1] = 1.0
        y[i] = size(o) - spans
    reg = LENGTH_RIDGE * np.eye(x.shape[1])
    reg[-1, -1] = 0.0
    coef = np.linalg.solve(x.T @ x + reg, x.T @ y)
    return {"vocab": words, "coef": [round(float(c), 4) for c in coef[:-1]], "intercept": round(float(coef[-1]), 4)}


def predicted_length(source: str, model: dict, vocab: dict[str, int]) -> float:
    """Output characters the length model expects for `source` (at least one)."""
    row, spans = length_row(source, vocab)
    coef = model["coef"]
    return max(1.0, model["intercept"] + spans + sum(coef[j] * v for j, v in row.items()))


# -- word endings -----------------------------------------------------------------------------------------------
_END_CHARS = 2      # a Korean run's ending: its last two syllables (a stem's end and its ending or particle)


def word_endings(text: str, lang: str) -> list[str]:
    """How each word of human text ends, protected spans removed: for Korean each Hangul run's last two
    syllables, otherwise each word (a Vietnamese syllable), lower case. A cut leaves endings human text does
    not have ("있습", "khớ", "nân")."""
    plain = plain_text(text).lower()
    if lang == "ko":
        return [run[-_END_CHARS:] for run in _HANGUL_RUN.findall(plain)]
    return [w for run in _LATIN_RUN.findall(plain) for w in run.split(" ")]


_LAST_RUN = {"ko": re.compile("[\uac00-\ud7a3]+$"), "vi": re.compile(r"[A-Za-z\u00c0-\u024f\u1e00-\u1eff]+$")}


def last_ending(text: str, lang: str) -> str | None:
    """The ending of the text's last word, if the text ends with a word (`word_endings`)."""
    text = text.rstrip()
    spans = span_matches(text)
    if spans and spans[-1][2] >= len(text):
        return None                                 # ends on a protected span, which is no word
    m = _LAST_RUN.get(lang, _LAST_RUN["vi"]).search(text.lower())
    return None if m is None else m.group(0)[-_END_CHARS:] if lang == "ko" else m.group(0)
