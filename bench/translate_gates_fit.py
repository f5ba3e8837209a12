"""Fit the translate gates' length-ratio bounds on human EN->ko/vi translations of UI strings and news.

    python -m bench.translate_gates_fit  ->  bench/results/translate_gates_length.json

Fitted on the DEV Debian catalogs' pairs and the even-numbered lines of NTREX-128 (news prose, whose Korean
is denser than UI Korean); the odd lines stay unseen. For each target language and source-length bucket
(characters, whitespace runs counted once) it records the quantiles of log(output characters / source
characters) over the human translations, and the same for the reference cut to 40 % (the truncation the
lower bound must catch). `LENGTH_BUCKETS` in transforms/translate_gates.py takes the 0.3 % and 99.9 %
quantiles from here. The same human texts give the word-end counts `transforms/word_ends.json.gz`
(`word_end_counts`; words with fewer than MIN_WORD_EVIDENCE occurrences are left out) and the omission model
`transforms/omission.json.gz` (`fit_omission`: a translation table of English content words, a length
model, the word endings human text has, and logistic weights fitted on the human translations against the
same texts cut to 40 %; its report, with the weights, goes into the result under "omission"). The held-out
packages and the odd NTREX lines are never fitted on.
"""
from __future__ import annotations

import gzip
import itertools
import json
import math
from pathlib import Path

import numpy as np

from bench.translate_gates import load_pairs
from bench.translate_gates_catalogs import DEV, FIT, LANGS, WORK, fetch, fit_references, load
from polycap.transforms.coverage import fit_coverage, fit_length, word_endings
from polycap.transforms.translate_gates import (
    MIN_OMISSION_SOURCE,
    MIN_WORD_EVIDENCE,
    OMISSION_FEATURES,
    OMISSION_FILE,
    WORD_ENDS_FILE,
    _size,
    first_failure,
    length_log_ratio,
    omission_features,
    word_end_counts,
)

EVAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "eval"
BUCKETS = [4, 8, 16, 32, 64]      # the last bucket holds every longer source
QUANTILES = [0.001, 0.003, 0.005, 0.01, 0.05, 0.3, 0.5, 0.95, 0.99, 0.999]
WORD_ENDS = Path(__file__).resolve().parents[1] / "transforms" / WORD_ENDS_FILE
LOWER_Q, UPPER_Q = 0.003, 0.999     # the bounds LENGTH_BUCKETS takes
OMISSION = Path(__file__).resolve().parents[1] / "transforms" / OMISSION_FILE
MEDIAN_BUCKETS = [0, *BUCKETS]      # source characters; the omission model's length-ratio medians
# The omission model's operating point: the share of the fitted human translations (both domains) its score
# may reject on top of the other gates, one of BUDGET_GRID (the others' thresholds are stored for the benches'
# trade-off tables), chosen for both languages together by `_choose_budgets` against the gates' false-reject
# targets (DEV_FR_TARGET over both languages, DEV_FR_TARGET_EACH for each) on the dev catalogs. Human references
# weigh REF_WEIGHT times a cut in the fit.
BUDGET_GRID = (0.0003, 0.0005, 0.001, 0.002, 0.003, 0.005)
DEV_FR_TARGET = 0.01
DEV_FR_TARGET_EACH = 0.015
REF_WEIGHT = 5.0
L2 = 0.01
# Gates the omission model is fitted after: every gate but itself (what it sees is what they pass).
OMISSION_SKIP = frozenset({"omission"})


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


def fit(fit_packages: list[str] = FIT) -> dict:
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
    # the word ends and the omission model also learn from the fit-only catalogs (the length bounds do not)
    fetch(fit_packages, WORK)
    domains["fit_catalogs"] = fit_references(fit_packages, WORK)
    out["data"]["fit_catalogs"] = "fit-only Debian catalogs: " + ", ".join(fit_packages)
    out["word_ends"] = {}
    for lang in LANGS:
        refs = [it for items in domains.values() for it in items if it["lang"] == lang and it["kind"] == "reference"]
        counts = word_end_counts((it["output"] for it in refs), lang)
        out["word_ends"][lang] = {w: c for w, c in sorted(counts.items()) if c[0] + c[2] >= MIN_WORD_EVIDENCE}
    out["domains"] = {d: [it for it in items if it["kind"] == "reference"] for d, items in domains.items()}
    return out


def _cut(text: str) -> str:
    """The truncation the model learns to catch: the text cut to 40 % of its characters (the catalogs'
    `truncated` kind)."""
    core = text.strip()
    return core[: round(len(core) * 0.4)]


def _logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted L2-regularised logistic regression by Newton's method (deterministic)."""
    b = np.zeros(x.shape[1])
    for _ in range(100):
        p = 1 / (1 + np.exp(-(x @ b)))
        grad = x.T @ (w * (p - y)) + L2 * b
        hess = (x * (w * p * (1 - p))[:, None]).T @ x + L2 * np.eye(len(b))
        step = np.linalg.solve(hess, grad)
        b -= step
        if np.abs(step).max() < 1e-9:
            break
    return b


def fit_omission(pairs: list[tuple[str, str]], lang: str, n_catalog: int) -> tuple[dict, dict]:
    """(model, report) of one target language from human pairs (the first `n_catalog` from the dev catalogs,
    then NTREX lines).

    Features of pair i and of its 40 % cut come from the lexicon, length model and endings fitted without
    pair i's fold, so the weights learn what they say of unseen text. Rows another gate already rejects are
    left out of the fit. The threshold is set by `omission` at the operating point `_choose_budgets` picks."""
    coverage_p, table, folds = fit_coverage(pairs, lang)
    length = fit_length(pairs, _size)
    fold_lengths = []
    for k in range(len(folds)):
        m = fit_length([p for j, p in enumerate(pairs) if j % len(folds) != k], _size)
        fold_lengths.append((m, {w: j + 2 for j, w in enumerate(m["vocab"])}))
    endings = sorted({e for _, o in pairs for e in word_endings(o, lang)})
    fold_endings = [frozenset(e for j, (_, o) in enumerate(pairs) if j % len(folds) != k for e in word_endings(o, lang))
                    for k in range(len(folds))]
    refs = [length_log_ratio(s, o) for s, o in pairs]
    medians = []
    for i, lo in enumerate(MEDIAN_BUCKETS):
        hi = MEDIAN_BUCKETS[i + 1] if i + 1 < len(MEDIAN_BUCKETS) else math.inf
        rs = sorted(r for (s, _), r in zip(pairs, refs) if r is not None and lo <= _size(s) < hi)
        medians.append((lo, round(rs[len(rs) // 2], 3) if rs else 0.0))
    rows, labels, caught, catalog = [], [], [], []
    for i, (s, o) in enumerate(pairs):
        if _size(s) < MIN_OMISSION_SOURCE:
            continue
        for output, label in ((o, 0.0), (_cut(o), 1.0)):
            if label and (not output.strip() or " ".join(output.split()) == " ".join(o.split())):
                continue
            rows.append(omission_features(s, output, lang, folds[i % len(folds)], coverage_p, medians,
                                          fold_lengths[i % len(folds)], fold_endings[i % len(folds)]))
            labels.append(label)
            catalog.append(i < n_catalog)
            caught.append(first_failure(s, output, lang, skip=OMISSION_SKIP) is not None)
    x, y, other = np.array(rows), np.array(labels), np.array(caught)
    keep = ~other
    b = _logistic(x[keep], y[keep], np.where(y[keep] == 1, 1.0, REF_WEIGHT))
    score = x @ b
    ref_scores = np.sort(score[keep & (y == 0)])[::-1]

    def at(budget: float) -> float:
        k = int(budget * (y == 0).sum())
        return float(ref_scores[k]) if k < len(ref_scores) else float(ref_scores.min()) - 1

    dev = np.array(catalog)
    dev_fr = {budget: float((other | (score > at(budget)))[(y == 0) & dev].mean()) for budget in BUDGET_GRID}
    dev_cut = {budget: float((other | (score > at(budget)))[(y == 1) & dev].mean()) for budget in BUDGET_GRID}
    report = {"pairs": len(pairs), "lexicon_terms": len(table), "dev_catalog_references": int(((y == 0) & dev).sum()),
              "dev_catalog_false_reject_rate_by_budget": {str(k): round(v, 5) for k, v in dev_fr.items()},
              "dev_catalog_cut_catch_rate_by_budget": {str(k): round(v, 5) for k, v in dev_cut.items()},
              "weights": dict(zip(OMISSION_FEATURES, np.round(b, 4).tolist())),
              "fitted_false_reject_rate_by_budget": {
                  str(k): {"other_gates": float(other[y == 0].mean()),
                           "with_omission": float((other | (score > at(k)))[y == 0].mean())} for k in BUDGET_GRID},
              "fitted_cut_catch_rate_by_budget": {
                  str(k): {"other_gates": float(other[y == 1].mean()),
                           "with_omission": float((other | (score > at(k)))[y == 1].mean())} for k in BUDGET_GRID}}
    model = {"lexicon": {t: [table[t], coverage_p[t]] for t in sorted(table)}, "medians": medians, "length": length,
             "endings": endings,
             "features": list(OMISSION_FEATURES), "weights": [round(v, 6) for v in b.tolist()],
             "operating_points": {str(k): round(at(k), 6) for k in BUDGET_GRID}}
    return model, report


def _choose_budgets(reports: dict[str, dict]) -> dict[str, float]:
    """One budget per language, chosen together on the dev catalogs' human translations and their 40 % cuts
    (out-of-fold features, all gates): among the budget pairs whose false-reject rate stays within
    DEV_FR_TARGET over both languages' references and within DEV_FR_TARGET_EACH for each, the pair that
    catches the most cuts in the language that catches fewest (then in the other; ties to smaller budgets);
    the smallest budgets if no pair is within. Chosen on dev data only: the held-out catalogs and odd NTREX
    lines then say where it lands."""
    langs = sorted(reports)
    best: tuple | None = None
    choice = {lang: min(BUDGET_GRID) for lang in langs}
    for combo in itertools.product(BUDGET_GRID, repeat=len(langs)):
        fr = {lang: reports[lang]["dev_catalog_false_reject_rate_by_budget"][str(b)] for lang, b in zip(langs, combo)}
        n = {lang: reports[lang]["dev_catalog_references"] for lang in langs}
        total = sum(fr[lang] * n[lang] for lang in langs) / max(1, sum(n.values()))
        if total > DEV_FR_TARGET or max(fr.values()) > DEV_FR_TARGET_EACH:
            continue
        caught = sorted(reports[lang]["dev_catalog_cut_catch_rate_by_budget"][str(b)] for lang, b in zip(langs, combo))
        key = (*caught, *(-b for b in combo))
        if best is None or key > best:
            best, choice = key, dict(zip(langs, combo))
    return choice


def omission(domains: dict[str, list[dict[str, str]]]) -> tuple[dict, dict]:
    """Models and reports for every language, from the human references of both domains."""
    models, reports = {}, {}
    for lang in LANGS:
        pairs = [(it["source"], it["output"]) for items in domains.values() for it in items
                 if it["lang"] == lang and it["kind"] == "reference"]
        n_catalog = sum(it["lang"] == lang and it["kind"] == "reference" for it in domains["catalogs"])
        models[lang], reports[lang] = fit_omission(pairs, lang, n_catalog)
    for lang, budget in _choose_budgets(reports).items():
        models[lang]["threshold"] = models[lang]["operating_points"][str(budget)]
        reports[lang]["budget"] = budget
        reports[lang]["fitted_false_reject_rate"] = reports[lang]["fitted_false_reject_rate_by_budget"][str(budget)]
        reports[lang]["fitted_cut_catch_rate"] = reports[lang]["fitted_cut_catch_rate_by_budget"][str(budget)]
    return models, reports


def main() -> None:
    res = fit()
    ends = res.pop("word_ends")
    data = {"data": "word-end counts [whole, clause ends, longer words started] of human EN->ko/vi translations: "
                    + res["data"]["catalogs"] + "; " + res["data"]["fit_catalogs"] + "; " + res["data"]["ntrex"]
                    + " (python -m bench.translate_gates_fit)",
            "counts": ends}
    with gzip.GzipFile(WORD_ENDS, "wb", mtime=0) as f:       # byte-identical on a re-fit
        f.write(json.dumps(data, ensure_ascii=False, sort_keys=True).encode("utf-8"))
    res["word_ends"] = {lang: {"words_stored": len(v)} for lang, v in ends.items()}
    models, res["omission"] = omission(res.pop("domains"))
    model_data = {"data": "omission model (translation table, length medians, logistic weights) of human "
                          "EN->ko/vi translations: " + res["data"]["catalogs"] + "; "
                          + res["data"]["fit_catalogs"] + "; " + res["data"]["ntrex"]
                          + " (python -m bench.translate_gates_fit)", "languages": models}
    with gzip.GzipFile(OMISSION, "wb", mtime=0) as f:
        f.write(json.dumps(model_data, ensure_ascii=False, sort_keys=True).encode("utf-8"))
    path = Path(__file__).resolve().parent / "results" / "translate_gates_length.json"
    path.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    for lang, bounds in res["bounds"].items():
        print(f'    "{lang}": {bounds},')
    for lang, r in res["omission"].items():
        print(f"    omission {lang}: {r['fitted_false_reject_rate']} {r['fitted_cut_catch_rate']}")


if __name__ == "__main__":
    main()
