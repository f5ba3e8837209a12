"""Fit the translate gates' length-ratio bounds on human EN->ko/vi translations of UI strings and news.

    python -m bench.translate_gates_fit  ->  bench/results/translate_gates_length.json

Fitted on the DEV Debian catalogs' pairs and the even-numbered lines of NTREX-128 (news prose, whose Korean
is denser than UI Korean); the odd lines stay unseen. For each target language and source-length bucket
(characters, whitespace runs counted once) it records the quantiles of log(output characters / source
characters) over the human translations, and the same for the reference cut to 40 % (the truncation the
lower bound must catch). `LENGTH_BUCKETS` in transforms/translate_gates.py takes the 0.3 % and 99.9 %
quantiles from here, `SHORT_QUANTILES` the 0.05 and 0.3 quantiles of both domains pooled. The same human
texts give the word-end counts `transforms/word_ends.json.gz` (`word_end_counts`; words with fewer than
MIN_WORD_EVIDENCE occurrences are left out). The held-out packages are never fitted on.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from bench.translate_gates import load_pairs
from bench.translate_gates_catalogs import DEV, LANGS, WORK, fetch, load
from polycap.transforms.translate_gates import (
    MIN_WORD_EVIDENCE,
    WORD_ENDS_FILE,
    _size,
    length_log_ratio,
    word_end_counts,
)

EVAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "eval"
BUCKETS = [4, 8, 16, 32, 64]      # the last bucket holds every longer source
QUANTILES = [0.001, 0.003, 0.005, 0.01, 0.05, 0.3, 0.5, 0.95, 0.99, 0.999]
SHORT_Q = (0.05, 0.3)               # the quantiles SHORT_QUANTILES takes (pooled domains)
WORD_ENDS = Path(__file__).resolve().parents[1] / "transforms" / WORD_ENDS_FILE
LOWER_Q, UPPER_Q = 0.003, 0.999     # the bounds LENGTH_BUCKETS takes


def _q(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3) if xs else float("nan")


def _bucket(n: int) -> int | None:
    """The bucket of a source of `n` characters (None below the first)."""
    found = None
    for b in BUCKETS:
        if n >= b:
            found = b
    return found


def _rows(items: list[dict[str, str]], lang: str) -> dict[str, dict]:
    ref: dict[int, list[float]] = {b: [] for b in BUCKETS}
    cut: dict[int, list[float]] = {b: [] for b in BUCKETS}
    for it in items:
        if it["lang"] != lang or it["kind"] not in ("reference", "truncated"):
            continue
        b = _bucket(_size(it["source"]))
        r = length_log_ratio(it["source"], it["output"])
        if b is not None and r is not None:
            (ref if it["kind"] == "reference" else cut)[b].append(r)
    return {str(b): {"n": len(ref[b]), "reference": {str(q): _q(ref[b], q) for q in QUANTILES},
                     "truncated_40pct": {str(q): _q(cut[b], q) for q in (0.5, 0.9, 0.95, 0.99)}}
            for b in BUCKETS if ref[b]}


def fit() -> dict:
    """Quantiles per domain (UI catalogs, news); the bounds are the loosest of the two in each bucket, so
    neither domain loses more than ~0.3 % of its human translations to the ratio check."""
    fetch(DEV, WORK)
    domains: dict[str, list[dict[str, str]]] = {"catalogs": load(DEV, WORK), "ntrex": []}
    for lang in LANGS:
        pairs = load_pairs(EVAL_DIR, lang)[::2]
        domains["ntrex"] += [{"lang": lang, "kind": "reference", "source": s, "output": r} for s, r in pairs]
        domains["ntrex"] += [{"lang": lang, "kind": "truncated", "source": s,
                              "output": r.strip()[: round(len(r.strip()) * 0.4)]} for s, r in pairs]
    out: dict = {"data": {"catalogs": "dev Debian catalogs: " + ", ".join(DEV),
                          "ntrex": "NTREX-128 newstest2019, even lines"},
                 "buckets_min_source_chars": BUCKETS, "quantiles": QUANTILES,
                 "by_domain": {d: {lang: _rows(items, lang) for lang in LANGS} for d, items in domains.items()},
                 "bounds": {}}
    for lang in LANGS:
        lo, hi = [], []
        for b in map(str, BUCKETS):
            rows = [out["by_domain"][d][lang][b] for d in domains if b in out["by_domain"][d][lang]]
            lo.append(min(r["reference"][str(LOWER_Q)] for r in rows))
            hi.append(max(r["reference"][str(UPPER_Q)] for r in rows))
        # shorter sources vary more: a bucket's bounds are never tighter than a longer bucket's
        for i in range(len(BUCKETS) - 2, -1, -1):
            lo[i], hi[i] = min(lo[i], lo[i + 1]), max(hi[i], hi[i + 1])
        out["bounds"][lang] = list(zip(BUCKETS, lo, hi))
    out["short_quantiles"] = {}
    out["word_ends"] = {}
    for lang in LANGS:
        refs = [it for items in domains.values() for it in items if it["lang"] == lang and it["kind"] == "reference"]
        pooled: dict[int, list[float]] = {b: [] for b in BUCKETS}
        for it in refs:
            b, r = _bucket(_size(it["source"])), length_log_ratio(it["source"], it["output"])
            if b is not None and r is not None:
                pooled[b].append(r)
        out["short_quantiles"][lang] = [(b, *(_q(pooled[b], q) for q in SHORT_Q)) for b in BUCKETS if pooled[b]]
        counts = word_end_counts((it["output"] for it in refs), lang)
        out["word_ends"][lang] = {w: c for w, c in sorted(counts.items()) if c[0] + c[2] >= MIN_WORD_EVIDENCE}
    return out


def main() -> None:
    res = fit()
    ends = res.pop("word_ends")
    data = {"data": "word-end counts [whole, clause ends, longer words started] of human EN->ko/vi translations: "
                    + res["data"]["catalogs"] + "; " + res["data"]["ntrex"] + " (python -m bench.translate_gates_fit)",
            "counts": ends}
    with gzip.GzipFile(WORD_ENDS, "wb", mtime=0) as f:       # byte-identical on a re-fit
        f.write(json.dumps(data, ensure_ascii=False, sort_keys=True).encode("utf-8"))
    res["word_ends"] = {lang: {"words_stored": len(v)} for lang, v in ends.items()}
    path = Path(__file__).resolve().parent / "results" / "translate_gates_length.json"
    path.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    for lang, bounds in res["bounds"].items():
        print(f'    "{lang}": {bounds},')
    for lang, q in res["short_quantiles"].items():
        print(f'    short "{lang}": {q},')


if __name__ == "__main__":
    main()
