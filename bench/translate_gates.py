"""Gate evaluation on real human translations: NTREX-128 ko/vi references (must pass) vs corrupted copies.

    python -m bench.translate_gates [--limit N]   ->  bench/results/translate_gates.json

Labelled set, per target language, from the line-aligned NTREX-128 newstest2019 files:
  reference           the human translation (must pass)
  reference_with_span the same with a protected span injected into source and reference alike (must pass)
  english_copy        the English source copied as output
  truncated_half      the reference cut to half its characters
  number_changed      the first digit of a number shared by source and reference changed (rows with one)
  span_dropped        the injected span removed from the reference only
  cjk                 a Chinese or Japanese sentence instead of the reference (hand-written news lines)
  repeated_loop       the reference's last sentence repeated three more times
  preamble            "Here is the translation:" (and localized variants) prepended
"""
from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from pathlib import Path

from polycap.transforms.translate_gates import first_failure

LANGS = {"ko": "kor", "vi": "vie"}
CORRUPTIONS = ("english_copy", "truncated_half", "number_changed", "span_dropped", "cjk", "repeated_loop",
               "preamble")
# Injected spans: (where, text). Prefix spans go before the sentence, suffix spans before its final
# punctuation, exactly as a grounded caption or an instruction would carry them.
SPANS = [("prefix", "<image>\n"), ("suffix", " <ref>Palu</ref><box>(120,340),(560,780)</box>"),
         ("suffix", " (https://example.org/news/2019/item?id=7)"), ("suffix", " `pip install polycap`"),
         ("suffix", " $E = mc^2$"), ("suffix", " <quad>(10,20),(30,20),(30,40),(10,40)</quad>")]
PREAMBLES = ["Here is the translation: ", "Here is the translation:\n", "Sure, here is the translation:\n",
             "Translation: ", "번역: ", "Bản dịch: "]
CJK = ["中国国家统计局周一公布的数据显示，九月份工业产出同比增长百分之五点八。",
       "日本政府は月曜日、新しい経済対策を発表した。",
       "台风“山竹”在广东登陆，当局已疏散数十万居民。",
       "東京の株式市場は、円安を背景に大幅に上昇しました。",
       "专家表示，这项研究结果还需要更多的数据来证实。",
       "警察によると、事故は午前九時ごろに発生したという。",
       "该公司计划明年在欧洲开设三家新工厂。",
       "首相は記者会見で、改革を続ける考えを示した。"]


def load_pairs(eval_dir: Path, lang: str) -> list[tuple[str, str]]:
    base = eval_dir / "text" / "ntrex128"
    src = (base / "newstest2019-src.eng.txt").read_text(encoding="utf-8").splitlines()
    ref = (base / f"newstest2019-ref.{LANGS[lang]}.txt").read_text(encoding="utf-8").splitlines()
    return [(s, r) for s, r in zip(src, ref) if s.strip() and r.strip()]


def _inject(text: str, span: tuple[str, str]) -> str:
    where, s = span
    if where == "prefix":
        return s + text
    m = re.search(r"[.!?…\"'”’)。]*$", text)
    cut = m.start() if m else len(text)
    return text[:cut] + s + text[cut:]


def _change_number(src: str, ref: str) -> str | None:
    src_nums = set(re.findall(r"\d+", src))
    for m in re.finditer(r"(?<![\d.,])\d+", ref):
        if m.group(0) in src_nums:
            d = m.group(0)[0]
            new = "8" if d == "9" else str(int(d) + 1)
            return ref[:m.start()] + new + ref[m.start() + 1:]
    return None


def _repeat_last(ref: str) -> str:
    last = re.split(r"(?<=[.!?。])\s+", ref.strip())[-1]
    return ref.rstrip() + (" " + last) * 3


def build_items(pairs: list[tuple[str, str]], lang: str) -> list[dict[str, str]]:
    """Labelled (kind, source, output) rows; kind 'reference*' must pass, every other kind must fail."""
    items = []
    for i, (src, ref) in enumerate(pairs):
        span = SPANS[i % len(SPANS)]
        src_s, ref_s = _inject(src, span), _inject(ref, span)
        rows = {"reference": (src, ref), "reference_with_span": (src_s, ref_s),
                "english_copy": (src, src), "truncated_half": (src, ref[: len(ref) // 2]),
                "span_dropped": (src_s, ref), "cjk": (src, CJK[i % len(CJK)]),
                "repeated_loop": (src, _repeat_last(ref)), "preamble": (src, PREAMBLES[i % len(PREAMBLES)] + ref)}
        changed = _change_number(src, ref)
        if changed is not None:
            rows["number_changed"] = (src, changed)
        items += [{"lang": lang, "kind": k, "index": str(i), "source": s, "output": o}
                  for k, (s, o) in rows.items()]
    return items


def evaluate(items: list[dict[str, str]]) -> dict:
    """False-reject rate on references, catch rate per corruption kind, and which gates fired."""
    total: Counter = Counter()
    failed: Counter = Counter()
    fired: dict[str, Counter] = {}
    examples: dict[str, list] = {}
    for it in items:
        res = first_failure(it["source"], it["output"], it["lang"])
        it["rejected"] = res is not None
        total[it["kind"]] += 1
        if res is not None:
            failed[it["kind"]] += 1
            fired.setdefault(it["kind"], Counter())[str(res[0])] += 1
        wrong = (res is not None) if it["kind"].startswith("reference") else (res is None)
        if wrong and len(examples.setdefault(it["kind"], [])) < 3:
            examples[it["kind"]].append({"source": it["source"][:200], "output": it["output"][:200],
                                         "gate": res[1] if res else None})
    refs = [k for k in total if k.startswith("reference")]
    corr = [k for k in total if not k.startswith("reference")]
    ref_n, ref_fail = sum(total[k] for k in refs), sum(failed[k] for k in refs)
    cor_n, cor_caught = sum(total[k] for k in corr), sum(failed[k] for k in corr)
    return {
        "false_reject_rate": ref_fail / max(1, ref_n), "references": ref_n,
        "catch_rate_overall": cor_caught / max(1, cor_n), "corrupted": cor_n,
        "per_kind": {k: {"n": total[k], "rejected": failed[k], "rate": failed[k] / total[k],
                         "gates": dict(fired.get(k, {}))} for k in sorted(total)},
        "misclassified_examples": {k: v for k, v in examples.items() if v},
    }


def run(eval_dir: Path, limit: int = 0) -> dict:
    t0 = time.time()
    out: dict = {"data": "NTREX-128 newstest2019 (Federmann et al. 2022), CC-BY-SA-4.0", "by_lang": {}}
    all_items = []
    for lang in LANGS:
        pairs = load_pairs(eval_dir, lang)
        items = build_items(pairs[:limit] if limit else pairs, lang)
        out["by_lang"][lang] = evaluate(items)
        # the omission model of the gates is fitted on the even lines (bench/translate_gates_fit.py)
        odd = [it for it in items if int(it["index"]) % 2]
        kinds = sorted({it["kind"] for it in odd})
        out["by_lang"][lang]["odd_lines_unfitted"] = {
            k: round(sum(it["rejected"] for it in odd if it["kind"] == k) / sum(it["kind"] == k for it in odd), 4)
            for k in kinds}
        all_items += items
    out["overall"] = {k: v for k, v in evaluate(all_items).items() if k != "misclassified_examples"}
    out["targets"] = {"false_reject_rate": "<= 0.01 (each language <= 0.015)", "per_kind_rate": ">= 0.95"}
    out["seconds"] = round(time.time() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "eval"))
    ap.add_argument("--limit", type=int, default=0, help="first N sentence pairs per language (0 = all)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "translate_gates.json"))
    args = ap.parse_args()
    res = run(Path(args.eval_dir), args.limit)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    o = res["overall"]
    print(f"false reject {o['false_reject_rate']:.3%} of {o['references']}, "
          f"catch {o['catch_rate_overall']:.3%} of {o['corrupted']} -> {args.out}")
    for lang, r in res["by_lang"].items():
        print(lang, {k: round(v["rate"], 3) for k, v in r["per_kind"].items()})


if __name__ == "__main__":
    main()
