"""Korean / Vietnamese OCR benchmark -> bench/results/ocr_ko_vi.json.

Per-language, per-condition CER and cards/s of the OCR stage's engine path (OcrRunner.read +
to_ocr_result: PP-OCRv6 detection, script routing, reading order) on rendered text cards
(bench/ocr_cards.py: NTREX sentences drawn with Debian fonts; the drawn text is the reference), plus the real
ko / vi / en images of ../shared/eval/ocr/gt.jsonl. `cer` scores the lines in the stored reading order;
`cer_line_aligned` first matches each line to the reference (isolates recognition from reading order).
CER ignores whitespace; `wer` (word edits / reference words, words split at whitespace: Korean eojeol) shows
word spacing too, e.g. a Korean reading with a space between every syllable.

Throughput: `items_per_s` is one process reading the cards one after another (wall clock, after the models
are loaded); `cpu_s_per_item` is that process's CPU time per card (all its threads); `two_processes` reads
all the cards again split over two worker processes, as a 2-core Beam worker runs the stage, and gives
cards / wall second of the slower one. The machine is shared: the load average before and after is recorded
with each figure, and `cards_per_s_2cores_cpu` = 2 / cpu_s_per_item is what two idle cores would do.
Usage: `python -m bench.ocr_ko_vi [N_PER_LANG_AND_CONDITION]` (default 8; needs the fonts and Tesseract
packages named in bench/ocr_cards.py and transforms/backends/ocr_script.py).
"""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import write_result
from bench.ocr_cards import EVAL, make_cards
from polycap.pipelines.ocr_eval import align_to_reference, cer_counts
from polycap.schemas.config import OcrConfig
from polycap.transforms.backends.ocr_handler import OcrRunner, decode_rgb
from polycap.transforms.ocr import to_ocr_result

LANGS = ["en", "ko", "vi"]
REAL_LANGS = {"ko", "vi", "ko+en", "en"}
TARGETS = {"ko": 0.05, "vi": 0.05, "en": 0.01, "real": 0.10, "cards_per_s": 1.0}


def _read(runner: OcrRunner, path: str, cfg: OcrConfig) -> tuple[Any, float, float]:
    with open(path, "rb") as f:
        rgb = decode_rgb(f.read())
    t0, c0 = time.perf_counter(), time.process_time()
    res = to_ocr_result(runner.read(rgb), cfg.min_score)
    return res, time.perf_counter() - t0, time.process_time() - c0


def word_counts(pred: str, gt: str) -> tuple[int, int]:
    """(word edit distance, reference words), words split at whitespace: each distinct word is coded as one
    private-use character and the codes are compared by cer_counts."""
    codes: dict[str, str] = {}

    def encode(text: str) -> str:
        return "".join(codes.setdefault(w, chr(0xF0000 + len(codes))) for w in text.split())
    return cer_counts(encode(pred), encode(gt))


def _score(pred_lines: list[str], gt: str) -> tuple[int, int, int, tuple[int, int]]:
    pred = "\n".join(pred_lines)
    dist, n = cer_counts(pred, gt)
    aligned = dist if len(pred_lines) < 2 else min(dist, cer_counts(align_to_reference(pred_lines, gt), gt)[0])
    return dist, aligned, n, word_counts(pred, gt)


def _add(groups: dict[str, dict[str, Any]], key: str, score: tuple[int, int, int, tuple[int, int]],
         secs: tuple[float, float], status: str) -> None:
    dist, aligned, n, (word_edits, words) = score
    g = groups.setdefault(key, {"items": 0, "edits": 0, "aligned": 0, "chars": 0, "word_edits": 0, "words": 0,
                                "seconds": 0.0, "cpu": 0.0, "status": {}})
    g["items"] += 1
    g["edits"] += dist
    g["aligned"] += aligned
    g["chars"] += n
    g["word_edits"] += word_edits
    g["words"] += words
    g["seconds"] += secs[0]
    g["cpu"] += secs[1]
    g["status"][status] = g["status"].get(status, 0) + 1


def _finish(groups: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {k: {"items": g["items"], "cer": round(g["edits"] / max(g["chars"], 1), 4),
                "cer_line_aligned": round(g["aligned"] / max(g["chars"], 1), 4),
                "wer": round(g["word_edits"] / max(g["words"], 1), 4),
                "items_per_s": round(g["items"] / max(g["seconds"], 1e-9), 2),
                "cpu_s_per_item": round(g["cpu"] / max(g["items"], 1), 3), "status": g["status"]}
            for k, g in sorted(groups.items())}


def run_cards(runner: OcrRunner, cfg: OcrConfig, per_cell: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    groups: dict[str, dict[str, Any]] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for card in make_cards(tmp, per_cell):
            res, *secs = _read(runner, card.path, cfg)
            texts = [ln.text for ln in res.lines]
            score = _score(texts, card.text)
            for key in (card.lang, f"{card.lang}/{card.condition}", "all"):
                _add(groups, key, score, (secs[0], secs[1]), res.status)
            (dist, _, n, (wdist, wn)) = score
            rows.append({"card": Path(card.path).name, "font": card.font, "status": res.status,
                         "cer": round(dist / max(n, 1), 4), "wer": round(wdist / max(wn, 1), 4),
                         "gt": card.text, "pred": "\n".join(texts)})
    return _finish(groups), rows


def run_real(runner: OcrRunner, cfg: OcrConfig, eval_dir: Path = EVAL) -> tuple[dict[str, Any], list[dict]]:
    gt_path = eval_dir / "ocr" / "gt.jsonl"
    groups: dict[str, dict[str, Any]] = {}
    rows = []
    for line in gt_path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["lang"] not in REAL_LANGS:
            continue
        res, *secs = _read(runner, str(gt_path.parent / row["path"]), cfg)
        texts = [ln.text for ln in res.lines]
        gt = " ".join(row["text"].split()) if row["path"].startswith("tesseract_test/8") else row["text"]
        score = _score(texts, gt)
        key = "ko" if row["lang"].startswith("ko") else row["lang"]
        _add(groups, key, score, (secs[0], secs[1]), res.status)
        dist, aligned, n, (wdist, wn) = score
        rows.append({"path": row["path"], "lang": row["lang"], "gt_source": row["gt_source"][:40],
                     "status": res.status, "cer": round(dist / max(n, 1), 4),
                     "cer_line_aligned": round(aligned / max(n, 1), 4), "wer": round(wdist / max(wn, 1), 4),
                     "pred": "\n".join(texts)[:300]})
    return _finish(groups), rows


def _worker(paths: list[str], ready: Any, go: Any, out: Any) -> None:
    cfg = OcrConfig(enabled=True, langs=LANGS)
    runner = OcrRunner(cfg)
    ready.release()
    go.wait()
    t0 = time.perf_counter()
    for path in paths:
        _read(runner, path, cfg)
    out.put(time.perf_counter() - t0)


def run_two_processes(per_cell: int) -> dict[str, Any]:
    """All cards split over two processes (models loaded first, then timed together): cards / wall second."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        paths = [c.path for c in make_cards(tmp, per_cell)]
        ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(paths[i::2], ready, go, out)) for i in range(2)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.acquire()
        load = os.getloadavg()[0]
        go.set()
        walls = [out.get() for _ in procs]
        for p in procs:
            p.join()
    return {"cards": len(paths), "wall_s": round(max(walls), 2), "cards_per_s": round(len(paths) / max(walls), 2),
            "loadavg_1min_before": round(load, 2), "loadavg_1min_after": round(os.getloadavg()[0], 2)}


def main(per_cell: int = 8) -> dict[str, Any]:
    cfg = OcrConfig(enabled=True, langs=LANGS)
    runner = OcrRunner(cfg)
    load0 = os.getloadavg()[0]
    cards, card_rows = run_cards(runner, cfg, per_cell)
    load1 = os.getloadavg()[0]
    real, real_rows = run_real(runner, cfg)
    two = run_two_processes(per_cell)
    cpu = cards["all"]["cpu_s_per_item"]
    throughput = {"one_process": {"cards_per_s": cards["all"]["items_per_s"], "cpu_s_per_card": cpu,
                                  "loadavg_1min_before": round(load0, 2), "loadavg_1min_after": round(load1, 2)},
                  "two_processes": two, "cards_per_s_2cores_cpu": round(2 / max(cpu, 1e-9), 2)}
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus (shared with other jobs: timings are noisy)",
        "config": {"langs": LANGS, "backend": cfg.backend, "models": runner.models},
        "cards_per_lang_and_condition": per_cell, "cards": cards, "real": real, "throughput": throughput,
        "targets": TARGETS,
        "pass": {"ko": cards["ko"]["cer"] < TARGETS["ko"], "vi": cards["vi"]["cer"] < TARGETS["vi"],
                 "en": cards["en"]["cer"] < TARGETS["en"],
                 "real_ko": real.get("ko", {}).get("cer", 1) < TARGETS["real"],
                 "real_vi": real.get("vi", {}).get("cer", 1) < TARGETS["real"],
                 "cards_per_s": two["cards_per_s"] >= TARGETS["cards_per_s"]},
        "card_rows": [r for r in card_rows if r["cer"] > 0], "real_rows": real_rows,
    }
    write_result("ocr_ko_vi", results)
    for k, v in {**{f"cards/{k}": v for k, v in cards.items()}, **{f"real/{k}": v for k, v in real.items()}}.items():
        print(f"{k:24s} cer={v['cer']:.4f} aligned={v['cer_line_aligned']:.4f} wer={v['wer']:.4f} "
              f"{v['items_per_s']}/s {v['status']}",
              file=sys.stderr)
    print(f"throughput {json.dumps(throughput)}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
