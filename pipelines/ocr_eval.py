"""`polycap ocr-eval`: run the OCR stage over a labelled set and report CER per language and images/s."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Any

import apache_beam as beam

from polycap.schemas import Hashes, ImageInfo, Reject, Sample, Source

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif"}


def load_labelled(path: str, gt_sources: str = "upstream") -> list[dict[str, Any]]:
    """Rows {path (absolute), lang, text, granularity, gt_source}.

    A JSONL (paths relative to its folder) keeps rows whose `gt_source` starts with `gt_sources`
    ("" or "all" keeps every row). A folder pairs each image with `<stem>.gold.txt` or `<stem>.txt`;
    its language is `en` unless a `<stem>.lang` file says otherwise.
    """
    p = Path(path)
    if p.is_dir():
        rows = []
        for img in sorted(x for x in p.iterdir() if x.suffix.lower() in IMAGE_EXTS):
            gt = next((c for c in (img.with_suffix(".gold.txt"), img.with_suffix(".txt")) if c.is_file()), None)
            if gt is None:
                continue
            lang_f = img.with_suffix(".lang")
            rows.append({"path": str(img), "text": gt.read_text(encoding="utf-8"), "granularity": "page",
                         "lang": lang_f.read_text().strip() if lang_f.is_file() else "en",
                         "gt_source": "dir"})
        return rows
    if not p.is_file():
        raise FileNotFoundError(f"ocr-eval: {path} is neither a JSONL file nor a folder")
    rows = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i + 1}: not JSON: {e}") from None
        if gt_sources not in ("", "all") and not str(row.get("gt_source", "")).startswith(gt_sources):
            continue
        row["path"] = str((p.parent / row["path"]).resolve())
        rows.append(row)
    return rows


def _levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def cer_counts(pred: str, gt: str) -> tuple[int, int]:
    """(edit distance, reference length) after NFC and removing all whitespace: line breaks and letter
    spacing differ between engines and transcriptions (MANIFEST: UNLV headings are letter-spaced)."""
    norm = lambda s: "".join(unicodedata.normalize("NFC", s).split())
    p, g = norm(pred), norm(gt)
    return _levenshtein(p, g), len(g)


def align_to_reference(lines: list[str], gt: str) -> str:
    """Predicted lines re-ordered to follow the reference's line order (each goes after its most similar
    reference line). Isolates recognition from reading order, e.g. on zoned magazine pages (UNLV)."""
    import difflib

    ref = ["".join(x.split()) for x in gt.splitlines() if x.strip()]
    if not ref:
        return "\n".join(lines)

    def best(line: str) -> int:
        q = "".join(line.split())
        return max(range(len(ref)), key=lambda i: difflib.SequenceMatcher(None, q, ref[i], autojunk=False).ratio())
    return "\n".join(ln for _, ln in sorted(((best(ln), i), ln) for i, ln in enumerate(lines)))


def _sample(i: int, row: dict[str, Any]) -> Sample:
    data = Path(row["path"]).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    return Sample(key=f"{sha[:24]}{i:08d}", source=Source(name="ocr-eval", uri=row["path"], kind="dir"),
                  image=ImageInfo(bytes=data), hashes=Hashes(sha256=sha))


def _to_json(x: Sample | Reject) -> str:
    if isinstance(x, Reject):
        return json.dumps({"key": x.key, "status": "rejected", "error": x.detail})
    o = x.ocr
    return json.dumps({"key": x.key, "status": o.status if o else "missing", "error": o.error if o else None,
                       "lines": [ln.text for ln in o.lines] if o else [], "lang": o.lang if o else None},
                      ensure_ascii=False)


def run_stage(samples: list[Sample], cfg: Any, beam_args: list[str] | None = None
              ) -> tuple[dict[str, dict], float]:
    """Run `RunOcr` over in-memory samples on the DirectRunner: (key -> {status, lines, lang}, engine seconds
    summed over images, from the stage's `ocr/engine_ms` distribution)."""
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    from polycap.transforms.ocr import RunOcr

    with tempfile.TemporaryDirectory(prefix="ocr-eval-") as tmp:
        prefix = os.path.join(tmp, "out")
        p = beam.Pipeline(options=PipelineOptions(beam_args or []))
        ok, bad = p | "Samples" >> beam.Create(samples, reshuffle=False) | "Ocr" >> RunOcr(cfg)
        _ = ((ok, bad) | beam.Flatten() | beam.Map(_to_json)
             | beam.io.WriteToText(prefix, file_name_suffix=".jsonl"))
        result = p.run()
        result.wait_until_finish()
        dists = result.metrics().query(MetricsFilter().with_namespace("ocr").with_name("engine_ms"))["distributions"]
        engine_s = sum(d.committed.sum for d in dists if d.committed) / 1000.0
        out = {}
        for f in sorted(Path(tmp).glob("out*.jsonl")):
            for line in f.read_text(encoding="utf-8").splitlines():
                rec = json.loads(line)
                out[rec["key"]] = rec
    return out, engine_s


def lang_checker(cfg: Any) -> Any:
    """A function `lang -> (readable, why not)` for rows like `zh+en`: the main recognizer's dictionary plus
    the languages the installed script recognizers add (Tesseract kor / vie, trueocr; ocr_script)."""
    from polycap.transforms.backends.ocr_models import (
        RAPID_LANGS,
        check_ocr_models,
        unsupported_langs,
    )
    from polycap.transforms.backends.ocr_script import INSTALL_KO, INSTALL_VI, script_langs

    models = check_ocr_models(cfg)
    charset = models.charset if cfg.backend != "rapidocr" else frozenset()
    extra = script_langs({k: Path(v) for k, v in models.scripts.items()})
    fixes = {"ko": f"Korean is read by Tesseract kor: {INSTALL_KO}", "vi": f"Vietnamese: {INSTALL_VI}"}

    def check(lang: str) -> tuple[bool, str]:
        langs = [x for x in lang.split("+") if x]
        bad = sorted(set(langs) - RAPID_LANGS) if cfg.backend == "rapidocr" else unsupported_langs(langs, charset)
        bad = [b for b in bad if b not in extra]
        if not bad:
            return True, ""
        hints = [fixes[b] for b in bad if b in fixes]
        return False, f"recognizer cannot read {', '.join(bad)}" + (f" ({'; '.join(hints)})" if hints else "")
    return check


def score(rows: list[dict[str, Any]], preds: list[dict[str, Any]], cfg: Any) -> dict[str, Any]:
    """Per-row and per-language CER (micro-averaged: total edits / total reference characters)."""
    per_row, groups = [], {}
    supported = lang_checker(cfg)
    for row, pred in zip(rows, preds):
        lines = pred.get("lines", [])
        text = lines[0] if row.get("granularity") == "first_line" and lines else "\n".join(lines)
        dist, n = cer_counts(text, row["text"])
        dist_aligned = dist if len(lines) < 2 else min(dist, cer_counts(align_to_reference(lines, row["text"]),
                                                                          row["text"])[0])
        ok, why = supported(row["lang"])
        per_row.append({"path": row["path"], "lang": row["lang"], "status": pred.get("status"),
                        "supported": ok, "cer": round(dist / max(n, 1), 4),
                        "cer_line_aligned": round(dist_aligned / max(n, 1), 4), "pred": text[:300]})
        keys = [row["lang"]]
        if "tesseract_test" in row["path"] and row["lang"] == "en":
            keys.append("en:tesseract_pages")
        for k in keys:
            g = groups.setdefault(k, {"rows": 0, "edits": 0, "aligned": 0, "chars": 0, "supported": ok,
                                      "reason": why})
            g["rows"] += 1
            g["edits"] += dist
            g["aligned"] += dist_aligned
            g["chars"] += n
    by_lang = {}
    for k, g in sorted(groups.items()):
        if g["supported"]:
            by_lang[k] = {"rows": g["rows"], "cer": round(g["edits"] / max(g["chars"], 1), 4),
                          "cer_line_aligned": round(g["aligned"] / max(g["chars"], 1), 4)}
        else:  # not a number we can stand behind: the model has no letters for this language
            by_lang[k] = {"rows": g["rows"], "cer": None, "status": "unsupported", "reason": g["reason"],
                          "cer_if_scored_anyway": round(g["edits"] / max(g["chars"], 1), 4)}
    return {"by_lang": by_lang, "rows": per_row}


def run(path: str, cfg: Any, out_json: str | None = None, gt_sources: str = "upstream",
        beam_args: list[str] | None = None) -> dict[str, Any]:
    """Run the OCR stage over a labelled JSONL or folder; return (and optionally write) the report."""
    rows = load_labelled(path, gt_sources)
    if not rows:
        raise ValueError(f"ocr-eval: no labelled rows in {path} (gt_sources={gt_sources!r})")
    samples = [_sample(i, r) for i, r in enumerate(rows)]
    t0 = time.perf_counter()
    out, engine_s = run_stage(samples, cfg, beam_args)
    wall = time.perf_counter() - t0
    preds = [out.get(s.key, {"status": "lost"}) for s in samples]
    report = {
        "input": str(path), "gt_sources": gt_sources, "images": len(rows),
        "backend": cfg.backend, "engine": cfg.engine, "device": cfg.device, "orientation": cfg.orientation,
        "det_max_side": getattr(cfg, "det_max_side", None),
        "failed": sum(p.get("status") in ("failed", "rejected", "lost") for p in preds),
        "wall_s": round(wall, 2), "images_per_s": round(len(rows) / wall, 3),
        "engine_images_per_s": round(len(rows) / engine_s, 3) if engine_s else None,
        **score(rows, preds, cfg),
    }
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report
