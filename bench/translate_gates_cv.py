"""How the fitted translate gates hold on catalogs they never saw: package-level cross-validation.

    python -m bench.translate_gates_cv [FOLDS]  ->  bench/results/translate_gates_cv.json

The held-out catalogs of `bench.translate_gates_catalogs` were read while gate classes were chosen, so they
are not blind. Here the fit-only packages (`FIT`) are split into FOLDS groups by position; for each group the
word ends and the omission model are fitted exactly as `bench.translate_gates_fit` does, without that group,
and the gates are evaluated on the group's catalogs (same labelled rows and corruptions as the held-out
evaluation). Nobody chose anything while looking at these packages' failures, so the per-fold rates say what
to expect of other UI catalogs. The shipped model is not changed.
"""
from __future__ import annotations

import sys
import time
from unittest import mock

from bench import write_result
from bench.translate_gates import evaluate
from bench.translate_gates_catalogs import DEV, FIT, LANGS, WORK, fetch, load
from bench.translate_gates_fit import fit, omission
from polycap.transforms import translate_gates as tg


def fold_result(held: list[str], rest: list[str]) -> dict:
    res = fit(rest)
    ends = {lang: {w: tuple(c) for w, c in words.items()} for lang, words in res.pop("word_ends").items()}
    models, reports = omission(res.pop("domains"))
    items = load(held, WORK)
    with mock.patch.object(tg, "word_ends", lambda: ends), mock.patch.object(tg, "omission_model", lambda: models):
        tg._lexicon.cache_clear()
        out = {}
        for lang in LANGS:
            r = evaluate([it for it in items if it["lang"] == lang])
            out[lang] = {"false_reject_rate": round(r["false_reject_rate"], 5), "references": r["references"],
                         "per_kind": {k: round(v["rate"], 4) for k, v in r["per_kind"].items() if k != "reference"},
                         "budget": reports[lang]["budget"]}
    tg._lexicon.cache_clear()
    n = sum(out[lang]["references"] for lang in LANGS)
    out["false_reject_rate_together"] = round(
        sum(out[lang]["false_reject_rate"] * out[lang]["references"] for lang in LANGS) / max(1, n), 5)
    return {"evaluated": held, **out}


def main(folds: int = 3) -> None:
    t0 = time.time()
    fetch(DEV + FIT, WORK)
    rows = []
    for k in range(folds):
        held = FIT[k::folds]
        rows.append(fold_result(held, [p for p in FIT if p not in held]))
        print(rows[-1], flush=True)
    targets = {"false_reject_rate": "<= 0.01 together, <= 0.015 each", "per_kind_rate": ">= 0.95"}
    write_result("translate_gates_cv", {
        "what": "package-level cross-validation of the fitted gates over the fit-only Debian catalogs: each "
                "fold's packages are left out of the fit and evaluated (python -m bench.translate_gates_cv)",
        "targets": targets, "folds": rows, "seconds": round(time.time() - t0, 1)})


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
