"""The main job (`polycap run`): ingest -> decode -> filter -> dedup -> OCR -> caption -> translate -> shards."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from polycap.schemas import SCHEMA_VERSION
from polycap.schemas.config import Config, to_dict
from polycap.sharding.staging import clear_staging

REPO = Path(__file__).resolve().parents[1]


class _DropTagNoise(logging.Filter):
    """Beam warns on every ParDo with both tagged outputs and `.with_exception_handling()`; it is harmless."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requested in with_outputs() but not declared" not in record.getMessage()


logging.getLogger().addFilter(_DropTagNoise())


def code_version() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty", "--tags"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version
    try:
        return f"polycap {version('polycap')}"
    except PackageNotFoundError:
        return "unknown"


def _write_json(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    os.replace(tmp, path)


def _one(_: Any) -> int:
    return 1


class WriteCount(beam.DoFn):
    """Writes a global count to `{"inputs": n}` at `path` (the count is taken in the pipeline, not the launcher)."""

    def __init__(self, path: str):
        self.path = path

    def process(self, n: int):
        _write_json(self.path, {"inputs": int(n)})


def caption_plan(cfg: Config) -> tuple[bool, str]:
    """Whether the caption stage runs, and the line the run summary prints about it."""
    if not cfg.caption.enabled or cfg.caption.backend == "none":
        return False, "caption: disabled; source captions (alt-text) carried forward as English text"
    from polycap.transforms.caption import caption_endpoint_status

    usable, msg = caption_endpoint_status(cfg.caption)
    if not usable:
        return False, f"caption: NOT RUN — {msg}; source captions (alt-text) carried forward, none invented"
    return True, f"caption: {cfg.caption.backend} {cfg.caption.model} ({msg})"


def translate_plan(cfg: Config) -> tuple[bool, str]:
    """Whether the translate stage runs; an OpenAI-compatible endpoint must be configured and answer."""
    t = cfg.translate
    if not t.enabled or t.backend == "none":
        return False, "translate: disabled"
    if t.backend == "openai":
        from polycap.transforms.caption import served_models

        if not t.endpoint:
            return False, "translate: NOT RUN — no translate.endpoint configured; no translation invented"
        try:
            served_models(t.endpoint.rstrip("/"), t.api_key_env)
        except (OSError, ValueError) as e:
            return False, f"translate: NOT RUN — GET {t.endpoint}/models failed ({getattr(e, 'reason', e)})"
    return True, f"translate: {t.backend} {t.model} -> {', '.join(t.to)}"


def preflight(cfg: Config) -> list[str]:
    """Checks that must fail once, before any work (models present, endpoints reachable)."""
    notes = []
    if cfg.ocr.enabled:
        from polycap.transforms.ocr import check_ocr_models

        check_ocr_models(cfg.ocr)  # raises with a message naming the missing files
        notes.append(f"ocr: {cfg.ocr.backend} on {cfg.ocr.device}")
    return notes


def build_pipeline(p: beam.Pipeline, cfg: Config, out: str, run_caption: bool, run_translate: bool) -> None:
    from polycap.sharding.rejects import WriteRejects
    from polycap.sharding.staging import staging_root
    from polycap.sharding.writer import WriteShards
    from polycap.transforms.build_records import BuildRecords
    from polycap.transforms.decode import DecodeImages
    from polycap.transforms.dedup import DedupImages
    from polycap.transforms.filters import FilterSamples
    from polycap.transforms.ingest import ReadSource
    from polycap.transforms.progress import LogProgress

    read = [p | f"Read{i}_{s.kind}" >> ReadSource(s, cfg.ingest) for i, s in enumerate(cfg.sources)]
    samples = [s for s, _ in read] | "FlattenSources" >> beam.Flatten()
    rejects = [r for _, r in read]
    # Count a 1 per input rather than flattening the inputs themselves: the DirectRunner materializes
    # every multi-input Flatten, so a Flatten of the raw samples copied every input image into a buffer
    # just to count it (bench/pipeline.py input, 1000 photos: ~3% of the run's CPU, ~15% of its sys time).
    ones = [pc | f"One{i}" >> beam.Map(_one) for i, pc in enumerate((samples, *rejects))]
    (ones | "AllInputs" >> beam.Flatten() | "CountInputs" >> beam.CombineGlobally(sum)
     | "WriteInputCount" >> beam.ParDo(WriteCount(os.path.join(out, "_inputs.json"))))

    samples = samples | "ProgressIngest" >> LogProgress("ingested")
    stages: list[tuple[str, beam.PTransform]] = [
        ("Decode", DecodeImages(cfg.decode, staging_root(out))),  # also stages the bytes
        ("Filter", FilterSamples(cfg.filter)),
        ("Dedup", DedupImages(cfg.dedup)),
    ]
    if cfg.ocr.enabled:
        from polycap.transforms.ocr import RunOcr
        stages.append(("Ocr", RunOcr(cfg.ocr)))
    if run_caption:
        from polycap.transforms.caption import CaptionImages
        stages.append(("Caption", CaptionImages(cfg.caption, out)))
    for label, stage in stages:
        samples, r = samples | label >> stage
        rejects.append(r)
    samples = samples | "BuildRecords" >> BuildRecords(carry_source=not run_caption)
    if run_translate:
        from polycap.transforms.translate import TranslateSamples
        samples, r = samples | "Translate" >> TranslateSamples(cfg.translate, out)
        rejects.append(r)
        samples = samples | "BuildTranslatedRecords" >> BuildRecords(carry_source=False)
    samples = samples | "ProgressShards" >> LogProgress("written to shards")
    _ = samples | "WriteShards" >> WriteShards(cfg.shards, out)
    _ = rejects | "FlattenRejects" >> beam.Flatten() | "WriteRejects" >> WriteRejects(out)


def collect_stats(out: str, started: float, split: str) -> dict[str, Any]:
    """`_stats.json`: inputs (counted at ingest), kept (this split's manifest rows; other splits written into
    the same output dir by earlier runs are not this run's), rejected (reject rows), by stage/reason."""
    import pyarrow.parquet as pq

    from polycap.sharding.rejects import read_rejects

    with open(os.path.join(out, "_inputs.json"), encoding="utf-8") as f:
        inputs = json.load(f)["inputs"]
    manifest = pq.read_table(os.path.join(out, "manifest.parquet"), filters=[("split", "=", split)])
    rejects = read_rejects(out).to_pylist()
    by_stage: dict[str, int] = {}
    by_reason: dict[str, int] = {}
    for r in rejects:
        by_stage[r["stage"]] = by_stage.get(r["stage"], 0) + 1
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    langs: dict[str, int] = {}
    for row in manifest.column("languages").to_pylist():
        for lang in row or []:
            langs[lang] = langs.get(lang, 0) + 1
    kept = manifest.num_rows
    return {
        "inputs": inputs, "kept": kept, "rejected": len(rejects),
        "balanced": inputs == kept + len(rejects),
        "rejected_by_stage": dict(sorted(by_stage.items())),
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "kept_by_language": dict(sorted(langs.items())),
        "seconds": round(time.time() - started, 2),
        "schema_version": SCHEMA_VERSION,
    }


def run(cfg: Config, pipeline_args: list[str] | None = None, config_path: str | None = None) -> dict[str, Any]:
    started = time.time()
    out = cfg.output
    os.makedirs(out, exist_ok=True)
    notes = preflight(cfg)
    run_caption, caption_note = caption_plan(cfg)
    run_translate, translate_note = translate_plan(cfg)
    notes.extend([caption_note, translate_note])
    args = list(pipeline_args or [])
    _write_json(os.path.join(out, "_run.json"), {
        "config": to_dict(cfg), "config_path": config_path, "code_version": code_version(),
        "schema_version": SCHEMA_VERSION, "pipeline_args": args, "python": sys.version.split()[0],
        "runner": next((a.split("=", 1)[1] for a in args if a.startswith("--runner=")), "DirectRunner"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "notes": notes,
    })
    for n in notes:
        print(f"[polycap] {n}", file=sys.stderr, flush=True)
    options = PipelineOptions(args)
    with beam.Pipeline(options=options) as p:
        build_pipeline(p, cfg, out, run_caption, run_translate)
    clear_staging(out)
    stats = collect_stats(out, started, cfg.shards.split)
    stats["notes"] = notes
    _write_json(os.path.join(out, "_stats.json"), stats)
    return stats


def summary_lines(stats: dict[str, Any], out: str) -> list[str]:
    lines = [f"inputs {stats['inputs']} = kept {stats['kept']} + rejected {stats['rejected']}"
             + ("" if stats["balanced"] else "   <-- MISMATCH: records were lost, this is a bug")]
    for reason, n in stats["rejected_by_reason"].items():
        lines.append(f"  rejected {reason}: {n}")
    if stats["kept_by_language"]:
        lines.append("  captions by language: " + ", ".join(f"{k}={v}" for k, v in stats["kept_by_language"].items()))
    lines.extend(stats.get("notes", []))
    lines.append(f"output: {out} (shards/, manifest.parquet, rejects/, _stats.json, _run.json) in {stats['seconds']} s")
    return lines
