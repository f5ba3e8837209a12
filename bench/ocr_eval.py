"""OCR benchmark: CER per language and images/s on ../shared/eval/ocr/gt.jsonl -> bench/results/ocr.json.

Runs the real OCR stage (Beam DirectRunner, real PP-OCR weights on CPU) for each backend, first on the
rows whose ground truth comes from upstream files/labels (the acceptance set), then on every row
(adds transcriptions made by eye). Usage: `python -m bench.ocr_eval [GT_JSONL]`.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

from bench import write_result
from polycap.pipelines.ocr_eval import run
from polycap.schemas.config import OcrConfig

REPO = Path(__file__).resolve().parents[1]
GT = Path(os.environ.get("POLYCAP_EVAL_DIR", REPO.parent / "shared" / "eval")) / "ocr" / "gt.jsonl"


def _summary(rep: dict) -> dict:
    return {k: v for k, v in rep.items() if k != "rows"}


def main(gt: str = str(GT)) -> dict:
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cpus (shared with other jobs: "
                          "timings are noisy)", "gt": gt, "runs": {}}
    for backend, subsets in (("paddleocr", ("upstream", "all")), ("rapidocr", ("upstream",))):
        cfg = OcrConfig(enabled=True, backend=backend, batch_size=4)
        for subset in subsets:
            rep = run(gt, cfg, None, gt_sources=subset)
            key = f"{backend}/{subset}"
            results["runs"][key] = _summary(rep)
            if subset == "upstream":
                results["runs"][key]["rows"] = rep["rows"]
            print(key, json.dumps(_summary(rep)["by_lang"], ensure_ascii=False), rep["images_per_s"],
                  file=sys.stderr)
    en = results["runs"]["paddleocr/upstream"]["by_lang"].get("en:tesseract_pages", {})
    results["acceptance"] = {"en_tesseract_pages_cer": en.get("cer"),
                             "en_tesseract_pages_cer_line_aligned": en.get("cer_line_aligned"),
                             "threshold": 0.05, "pass": en.get("cer") is not None and en["cer"] < 0.05}
    write_result("ocr", results)
    return results


if __name__ == "__main__":
    main(*sys.argv[1:])
